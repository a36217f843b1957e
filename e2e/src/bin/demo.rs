//! The live demo: a bootstrap node and three trusted nodes in network
//! namespaces on one machine, brought up with real `wh` daemons; it prints
//! `wh show` from one node, pings across the overlay, and cleans up.
//! Run as root: `sudo bash e2e/demo.sh`.

use anyhow::{Context, Result, bail};
use std::time::{Duration, Instant};
use wirehub_e2e::Lab;

fn main() -> Result<()> {
    if !wirehub_e2e::available() {
        bail!("the demo builds network namespaces: run it as root (sudo bash e2e/demo.sh)");
    }
    let mut lab = Lab::new()?;
    println!(
        "lab {}: an internet bridge, a bootstrap node and three nodes, each in its own network namespace\n",
        lab.tag
    );
    let boot = lab.public_host("boot")?;
    let (boot_sk, boot_pk) = lab.genkey("boot")?;
    let public = lab.write("public", "name public\nworkbit 8\n")?;
    lab.wh_up(&boot, &public, Some(&boot_sk), &[])?;
    lab.wait_daemon(&boot, Duration::from_secs(10))?;

    let names = ["node_a", "node_b", "node_c"];
    let mut hosts = Vec::new();
    let mut config = format!(
        "name demo\nsubnet 10.0.42.0/24\nboot {boot_pk} {}\n",
        boot.ip
    );
    let mut keys = Vec::new();
    for name in names {
        hosts.push(lab.public_host(name)?);
        let (sk, pk) = lab.genkey(name)?;
        config += &format!("trust {name} {pk}\n");
        keys.push(sk);
    }
    let config_path = lab.write("demo.conf", &config)?;
    println!("$ cat demo.conf\n{config}");
    println!("$ wh check demo.conf");
    print!(
        "{}",
        lab.wh_ok(&hosts[0], &["check", &config_path.to_string_lossy()])?
    );
    println!();

    let start = Instant::now();
    for (host, sk) in hosts.iter().zip(&keys) {
        println!(
            "[{}] $ wh up demo.conf private-key {}.sk",
            host.name, host.name
        );
        lab.wh_up(host, &config_path, Some(sk), &[])?;
    }
    for host in &hosts {
        lab.wait_daemon(host, Duration::from_secs(10))?;
    }
    for (i, a) in hosts.iter().enumerate() {
        for (j, b) in hosts.iter().enumerate() {
            if i != j {
                let ip = format!("10.0.42.{}", j + 2);
                let t = lab
                    .ping_until(a, &ip, Duration::from_secs(15))
                    .with_context(|| {
                        format!("{} could not reach {}:\n{}", a.name, b.name, lab.log(a))
                    })?;
                println!(
                    "{} reached {} ({ip}) {:.2} s after the first wh up (waited {:.2} s)",
                    a.name,
                    b.name,
                    start.elapsed().as_secs_f64(),
                    t.as_secs_f64()
                );
            }
        }
    }
    // Give the nodes a moment to learn their NAT from their peers' pongs.
    std::thread::sleep(Duration::from_millis(1500));
    println!("\n[node_a] $ wh");
    print!("{}", lab.wh_ok(&hosts[0], &["show"])?);
    println!("\n[node_a] $ ping -c 3 node_c (10.0.42.4)");
    print!(
        "{}",
        lab.exec(
            &hosts[0].netns,
            &["ping", "-c", "3", "-i", "0.2", "10.0.42.4"]
        )?
    );
    let v6 = lab.wh_ok(&hosts[0], &["resolve", "node_b"])?;
    if let Some(v6) = v6.lines().nth(1) {
        println!("\n[node_a] $ ping -c 2 {v6}   (node_b's IPv6 overlay address)");
        print!(
            "{}",
            lab.exec(&hosts[0].netns, &["ping", "-c", "2", "-i", "0.2", v6])?
        );
    }
    println!("\ncleaning up the lab");
    drop(lab);
    println!("done");
    Ok(())
}
