//! Shell completion. The scripts `wh completion SHELL` prints are thin: they
//! call `wh __complete INDEX WORDS...`, which answers from the command table
//! and, for interfaces and peers, from the running daemons. A line `@files`
//! asks the shell to complete file names.

use super::commands::{Failure, Outcome};
use super::{COMMANDS, Usage, Value, command};

const FILES: &str = "@files";

/// Candidates for the word at `index` (1 = the command name) given all the
/// words after `wh` typed so far (the last may be the partial current word).
pub fn candidates(index: usize, words: &[String]) -> Vec<String> {
    if index <= 1 {
        return COMMANDS.iter().map(|c| c.name.to_string()).collect();
    }
    let Some(cmd) = words.first().and_then(|w| command(w)) else {
        return Vec::new();
    };
    let before = &words[1..(index - 1).min(words.len())];
    if let Some(prev) = before.last()
        && let Some(k) = cmd.keywords.iter().find(|k| k.name == prev)
    {
        // The value of a keyword, unless the keyword itself was a value.
        let pairs_before = before.len() >= 2
            && cmd
                .keywords
                .iter()
                .any(|k| k.name == before[before.len() - 2]);
        if !pairs_before {
            return values(k.value, words);
        }
    }
    // Count positionals already given, skipping keyword/value pairs.
    let mut used = Vec::new();
    let mut positionals = 0;
    let mut i = 0;
    while i < before.len() {
        let w = before[i].as_str();
        if cmd.keywords.iter().any(|k| k.name == w) {
            used.push(w);
            i += 2;
            continue;
        }
        if !cmd.flags.iter().any(|(f, _)| *f == w) {
            positionals += 1;
        }
        i += 1;
    }
    let mut out = Vec::new();
    if let Some(p) = cmd.positionals.get(positionals) {
        if cmd.name == "help" {
            out.extend(COMMANDS.iter().map(|c| c.name.to_string()));
        } else {
            out.extend(values(p.value, words));
        }
        if cmd.name == "show" && positionals == 0 {
            out.extend(["all".to_string(), "interfaces".to_string()]);
        }
    }
    out.extend(
        cmd.keywords
            .iter()
            .filter(|k| !used.contains(&k.name))
            .map(|k| k.name.to_string()),
    );
    out.extend(cmd.flags.iter().map(|(f, _)| f.to_string()));
    out
}

fn values(v: Value, words: &[String]) -> Vec<String> {
    match v {
        Value::File => vec![FILES.to_string()],
        Value::Choice(c) => c.iter().map(|s| s.to_string()).collect(),
        Value::Interface => crate::control::client::interface_names(),
        Value::Peer => words
            .get(1)
            .map(|i| crate::control::client::peer_names(i))
            .unwrap_or_default(),
        Value::Number | Value::Text => Vec::new(),
    }
}

/// `wh __complete INDEX WORDS...`
pub fn complete(args: &[String]) -> Outcome {
    let index = args
        .first()
        .and_then(|i| i.parse::<usize>().ok())
        .unwrap_or(1);
    let words = args.get(1..).unwrap_or_default();
    let list: String = candidates(index, words)
        .iter()
        .map(|c| format!("{c}\n"))
        .collect();
    super::out(list)?;
    Ok(0)
}

const BASH: &str = r#"# wh completion for bash: source <(wh completion bash)
_wh() {
    local cur="${COMP_WORDS[COMP_CWORD]}" line files=0
    local -a words=()
    while IFS= read -r line; do
        if [[ "$line" == "@files" ]]; then files=1; else words+=("$line"); fi
    done < <(wh __complete "$COMP_CWORD" "${COMP_WORDS[@]:1}" 2>/dev/null)
    COMPREPLY=($(compgen -W "${words[*]}" -- "$cur"))
    if (( files )); then
        compopt -o filenames 2>/dev/null
        COMPREPLY+=($(compgen -f -- "$cur"))
    fi
}
complete -F _wh wh
"#;

const ZSH: &str = r#"#compdef wh
# wh completion for zsh: source <(wh completion zsh)
_wh() {
    local -a cands
    cands=("${(@f)$(wh __complete $((CURRENT - 1)) ${words[2,-1]} 2>/dev/null)}")
    if (( ${cands[(I)@files]} )); then
        cands=(${cands:#@files})
        _files
    fi
    (( ${#cands} )) && compadd -a cands
}
compdef _wh wh
"#;

const FISH: &str = r#"# wh completion for fish: wh completion fish | source
function __wh_complete
    set -l tokens (commandline -opc)
    set -l cur (commandline -ct)
    for c in (wh __complete (count $tokens) $tokens[2..-1] $cur 2>/dev/null)
        if test "$c" = "@files"
            __fish_complete_path $cur
        else
            echo $c
        end
    end
end
complete -c wh -f -a '(__wh_complete)'
"#;

/// `wh completion SHELL`
pub fn print(shell: &str) -> Outcome {
    let script = match shell {
        "bash" => BASH,
        "zsh" => ZSH,
        "fish" => FISH,
        other => {
            return Err(Failure::Usage(Usage {
                command: Some("completion"),
                message: format!("no completion for shell '{other}'; use bash, zsh or fish"),
            }));
        }
    };
    super::out(script)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn completes_commands_keywords_values_and_files() {
        assert!(candidates(1, &w("ge")).contains(&"genkey".to_string()));
        let c = candidates(2, &w("up "));
        assert!(c.contains(&FILES.to_string()), "{c:?}");
        assert!(c.contains(&"private-key".to_string()));
        let c = candidates(3, &w("up ./config "));
        assert!(c.contains(&"private-key".to_string()) && c.contains(&"--foreground".to_string()));
        assert!(!c.contains(&FILES.to_string()), "{c:?}");
        assert_eq!(
            candidates(4, &w("up ./config private-key ")),
            vec![FILES.to_string()]
        );
        assert_eq!(
            candidates(4, &w("up ./config mode ")),
            vec!["unknown", "direct", "nat"]
        );
        let c = candidates(5, &w("up ./config mode nat "));
        assert!(
            !c.contains(&"mode".to_string()) && c.contains(&"interface".to_string()),
            "{c:?}"
        );
        assert!(candidates(2, &w("help ")).contains(&"reload".to_string()));
        assert_eq!(
            candidates(2, &w("completion ")),
            vec!["bash", "zsh", "fish"]
        );
    }
}
