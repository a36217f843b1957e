//! The verbs: ADD, DEL, CHECK, VERSION, STATUS, GC.

use crate::config::{Attachment, NetConf};
use crate::delegate::{self, Call, Env};
use crate::error::{
    CHECK_FAILED, CniError, CniResult, IFACE_EXISTS, INCOMPATIBLE_VERSION, INVALID_CONFIG, IPAM,
    NOT_AVAILABLE,
};
use crate::link::{self, Netns};
use crate::net::{GATEWAY_V4, GATEWAY_V6, IpNet, format_mac, host_veth_name};
use crate::result::{CniOutput, Interface, IpConfig, Route};
use crate::state::{Record, Store};
use crate::version::{self, Version};
use crate::{info, nft, warn};
use rtnetlink::Handle;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::net::IpAddr;

/// What the process prints and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit: i32,
}

impl Outcome {
    fn ok(stdout: String) -> Self {
        Outcome { stdout, exit: 0 }
    }
    fn err(e: &CniError, cni_version: &str) -> Self {
        Outcome {
            stdout: e.to_json(cni_version),
            exit: 1,
        }
    }
}

/// Run one invocation: `env` is the process environment, `stdin` the
/// configuration. Never panics on outside input.
pub fn dispatch(env: &Env, stdin: &[u8]) -> Outcome {
    let Some(cmd) = env.get_set("CNI_COMMAND") else {
        return Outcome::err(&CniError::env("CNI_COMMAND is not set"), version::LATEST);
    };
    if cmd == "VERSION" {
        return cmd_version(stdin);
    }
    if !matches!(cmd, "ADD" | "DEL" | "CHECK" | "GC" | "STATUS") {
        return Outcome::err(
            &CniError::env(format!(
                "unknown CNI_COMMAND {cmd:?} (expected ADD, DEL, CHECK, GC, STATUS or VERSION)"
            )),
            version::LATEST,
        );
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => {
            let v = error_version(stdin);
            crate::log::write("ERROR", &format!("{cmd}: {e}"));
            return Outcome::err(&e, &v);
        }
    };
    crate::log::init(conf.log_file.as_deref());
    crate::log::set_context(format!(
        "{cmd} net={} cid={} if={}",
        conf.name,
        env.get("CNI_CONTAINERID").unwrap_or("-"),
        env.get("CNI_IFNAME").unwrap_or("-")
    ));
    let res = match cmd {
        "ADD" => cmd_add(&conf, env),
        "DEL" => cmd_del(&conf, env).map(|_| String::new()),
        "CHECK" => cmd_check(&conf, env).map(|_| String::new()),
        "GC" => cmd_gc(&conf, env).map(|_| String::new()),
        _ => cmd_status(&conf, env).map(|_| String::new()),
    };
    match res {
        Ok(out) => {
            info!("ok");
            Outcome::ok(out)
        }
        Err(e) => {
            crate::error!("{e}");
            Outcome::err(&e, &conf.cni_version)
        }
    }
}

/// The version to write an early error in: the config's if it is one we
/// know, else the newest.
fn error_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| version::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| version::LATEST.to_string())
}

fn cmd_version(stdin: &[u8]) -> Outcome {
    // VERSION's stdin is `{"cniVersion": ...}`; it may be empty or old.
    let v = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| version::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| version::LATEST.to_string());
    Outcome::ok(version::version_json(&v))
}

/// The attachment named by the environment.
struct AttachEnv {
    container_id: String,
    ifname: String,
    netns: Option<String>,
    cni_path: String,
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

impl AttachEnv {
    fn read(env: &Env, need_netns: bool) -> CniResult<AttachEnv> {
        let container_id = env
            .get_set("CNI_CONTAINERID")
            .ok_or_else(|| CniError::env("CNI_CONTAINERID is not set"))?;
        if !crate::config::valid_name(container_id) {
            return Err(CniError::env(format!(
                "CNI_CONTAINERID {container_id:?} must be letters, digits, `_`, `.`, `-`"
            )));
        }
        let ifname = env
            .get_set("CNI_IFNAME")
            .ok_or_else(|| CniError::env("CNI_IFNAME is not set"))?;
        if !valid_ifname(ifname) {
            return Err(CniError::env(format!(
                "CNI_IFNAME {ifname:?} is not a valid interface name (1-15 characters, no '/', ':' or space)"
            )));
        }
        let netns = env.get_set("CNI_NETNS").map(str::to_string);
        if need_netns && netns.is_none() {
            return Err(CniError::env("CNI_NETNS is not set"));
        }
        let cni_path = env
            .get_set("CNI_PATH")
            .ok_or_else(|| CniError::env("CNI_PATH is not set"))?
            .to_string();
        Ok(AttachEnv {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            netns,
            cni_path,
        })
    }
}

fn runtime() -> CniResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::new(crate::error::IO_FAILURE, format!("tokio runtime: {e}")))
}

/// The configuration as handed to IPAM for ADD/DEL/CHECK. IPAM results are
/// the same in 1.0.0 and 1.1.0, and the host-local of Debian 12 stops at
/// 1.0.0, so 1.1.0 is passed down as 1.0.0 (no extra VERSION call per pod).
fn ipam_config(conf: &NetConf) -> Map<String, Value> {
    let mut m = conf.raw.clone();
    if conf.version > Version::V1_0_0 {
        m.insert("cniVersion".into(), Value::String("1.0.0".into()));
    }
    m.remove("cni.dev/valid-attachments");
    m.remove("cni.dev/attachments");
    m
}

fn ipam_call<'a>(
    conf: &'a NetConf,
    env: &'a Env,
    cni_path: &str,
    command: &str,
    attach: Option<(&str, &str)>,
) -> CniResult<Call<'a>> {
    let path = delegate::find_plugin(&conf.ipam_type, cni_path)?;
    let mut overrides = vec![("CNI_COMMAND", Some(command.to_string()))];
    if let Some((cid, ifname)) = attach {
        overrides.push(("CNI_CONTAINERID", Some(cid.to_string())));
        overrides.push(("CNI_IFNAME", Some(ifname.to_string())));
        overrides.push(("CNI_NETNS", None));
    }
    Ok(Call {
        plugin: &conf.ipam_type,
        path,
        env,
        overrides,
    })
}

fn ipam_del(
    conf: &NetConf,
    env: &Env,
    cni_path: &str,
    attach: Option<(&str, &str)>,
) -> CniResult<()> {
    ipam_call(conf, env, cni_path, "DEL", attach)?
        .run(&ipam_config(conf))
        .map(|_| ())
}

// ---------------------------------------------------------------- ADD

/// What the first phase of ADD made (before the addresses are known).
struct Plumbed {
    host_veth: String,
    host_index: u32,
    pod_index: u32,
    host_mac: Vec<u8>,
    pod_mac: Vec<u8>,
}

/// Parse the IPAM answer into the result and the pod's addresses (at least
/// one IPv4).
fn read_ipam(conf: &NetConf, out: &[u8]) -> CniResult<(CniOutput, Vec<IpAddr>)> {
    let ipam = serde_json::from_slice::<Value>(out)
        .map_err(|e| e.to_string())
        .and_then(|v| CniOutput::from_value(&v))
        .map_err(|e| CniError::new(IPAM, format!("IPAM result cannot be read: {e}")))?;
    let mut addrs: Vec<IpAddr> = Vec::new();
    for ip in &ipam.ips {
        let n = ip
            .address
            .parse::<IpNet>()
            .map_err(|e| CniError::new(IPAM, format!("IPAM gave a bad address: {e}")))?;
        addrs.push(n.addr);
    }
    if !addrs.iter().any(IpAddr::is_ipv4) {
        return Err(CniError::new(
            IPAM,
            format!("IPAM plugin {} gave no IPv4 address", conf.ipam_type),
        ));
    }
    Ok((ipam, addrs))
}

fn cmd_add(conf: &NetConf, env: &Env) -> CniResult<String> {
    let a = AttachEnv::read(env, true)?;
    let netns_path = a.netns.clone().unwrap_or_default();
    let netns = Netns::open(&netns_path)
        .map_err(|e| CniError::env(format!("CNI_NETNS {netns_path:?} cannot be opened: {e}")))?;
    let prev = match &conf.prev_result {
        Some(v) => CniOutput::from_value(v).map_err(|e| {
            CniError::new(
                crate::error::DECODE,
                format!("prevResult cannot be read: {e}"),
            )
        })?,
        None => CniOutput::default(),
    };
    let rt = runtime()?;
    let store = Store::new(&conf.state_dir, &conf.name);

    // Refuse early, before any allocation, if the interface exists.
    let pod_h = rt.block_on(async { link::connect(Some(&netns)) })?;
    if rt
        .block_on(link::link_by_name(&pod_h, &a.ifname))?
        .is_some()
    {
        return Err(CniError::new(
            IFACE_EXISTS,
            format!("interface {:?} already exists in {netns_path}", a.ifname),
        ));
    }
    let host_veth = host_veth_name(&a.container_id, &a.ifname);
    let mut record = Record {
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
        netns: netns_path.clone(),
        host_veth: host_veth.clone(),
        ips: Vec::new(),
    };
    // The record exists before anything is made, so that a crash at any
    // later point leaves something GC can find.
    {
        let lock = store.lock()?;
        store.save(&record, &lock)?;
    }

    // Phase 1: IPAM runs while we make the veth pair and the parts of the
    // pod's routing that do not depend on its address.
    let pending = match ipam_call(conf, env, &a.cni_path, "ADD", None)
        .and_then(|c| c.spawn(&ipam_config(conf)))
    {
        Ok(p) => p,
        Err(e) => {
            if let Ok(lock) = store.lock() {
                let _ = store.remove(&a.container_id, &a.ifname, &lock);
            }
            return Err(e);
        }
    };
    let plumbed = rt.block_on(async {
        let host_h = link::connect(None)?;
        let p = plumb_link(conf, &a, &netns, &host_h, &pod_h, &host_veth).await?;
        Ok::<_, CniError>((host_h, p))
    });
    let ipam_res = pending.wait();
    let ipam_ok = ipam_res.is_ok();
    let (host_h, plumbed, ipam, addrs) = match (plumbed, ipam_res.and_then(|o| read_ipam(conf, &o)))
    {
        (Ok((h, p)), Ok((ipam, addrs))) => (h, p, ipam, addrs),
        (l, i) => {
            // Report the IPAM failure if there is one, else the link's.
            let err = match (l, i) {
                (_, Err(e)) => e,
                (Err(e), _) => e,
                _ => CniError::new(crate::error::NETLINK, "ADD failed"),
            };
            warn!("ADD failed, undoing: {err}");
            undo_add(conf, env, &a, &store, &rt, &host_veth, &[], ipam_ok);
            return Err(err);
        }
    };
    info!("ipam gave {addrs:?}");

    // Phase 2: the addresses, host routes, masquerade.
    record.ips = addrs.clone();
    let res = (|| -> CniResult<()> {
        let lock = store.lock()?;
        store.save(&record, &lock)?;
        let nft_fast = if conf.ip_masq {
            let rules = nft::rules_script(&conf.nft_table, &conf.no_masq_subnets());
            if store.nft_rules(&conf.nft_table).as_deref() == Some(rules.as_str()) {
                Some(nft::spawn(&nft::elements_script(&conf.nft_table, &addrs))?)
            } else {
                None
            }
        } else {
            None
        };
        rt.block_on(plumb_addrs(&host_h, &pod_h, &plumbed, &addrs, &ipam))?;
        if conf.ip_masq {
            let fast_ok = match nft_fast {
                Some(p) => p.wait().is_ok(),
                None => false,
            };
            if !fast_ok {
                nft::apply(&nft::add_script(
                    &conf.nft_table,
                    &conf.no_masq_subnets(),
                    &addrs,
                ))?;
                let rules = nft::rules_script(&conf.nft_table, &conf.no_masq_subnets());
                store.set_nft_rules(&conf.nft_table, Some(&rules), &lock);
            }
        }
        Ok(())
    })();
    if let Err(e) = res {
        warn!("ADD failed, undoing: {e}");
        undo_add(conf, env, &a, &store, &rt, &host_veth, &addrs, true);
        return Err(e);
    }

    Ok(build_result(conf, &a, &netns_path, prev, &ipam, &addrs, &plumbed).to_json())
}

#[allow(clippy::too_many_arguments)]
fn undo_add(
    conf: &NetConf,
    env: &Env,
    a: &AttachEnv,
    store: &Store,
    rt: &tokio::runtime::Runtime,
    host_veth: &str,
    addrs: &[IpAddr],
    ipam_allocated: bool,
) {
    if let Ok(h) = rt.block_on(async { link::connect(None) })
        && let Err(e) = rt.block_on(link::del_link_by_name(&h, host_veth))
    {
        warn!("undo: {e}");
    }
    if ipam_allocated && let Err(e) = ipam_del(conf, env, &a.cni_path, None) {
        warn!("undo: IPAM DEL: {e}");
    }
    if let Ok(lock) = store.lock() {
        let _ = store.remove(&a.container_id, &a.ifname, &lock);
        if conf.ip_masq && !addrs.is_empty() {
            let last = store.count_all() == 0;
            if let Err(e) = nft::apply(&nft::del_script(&conf.nft_table, addrs, last)) {
                warn!("undo: {e}");
            }
            if last {
                store.set_nft_rules(&conf.nft_table, None, &lock);
            }
        }
    }
}

/// Phase 1 of ADD: the veth pair (the pod end created directly in the pod's
/// namespace under its final name), both ends up, and in the pod the
/// gateway's permanent neighbour entry, its link route and the IPv4 default
/// route.
async fn plumb_link(
    conf: &NetConf,
    a: &AttachEnv,
    netns: &Netns,
    host_h: &Handle,
    pod_h: &Handle,
    host_veth: &str,
) -> CniResult<Plumbed> {
    // A host end left over by an earlier attempt of the same attachment.
    if link::del_link_by_name(host_h, host_veth).await? {
        warn!("removed a stale {host_veth}");
    }
    if let Err(e) = link::create_veth(host_h, host_veth, &a.ifname, netns, conf.mtu).await {
        if link::link_by_name(pod_h, &a.ifname).await?.is_some() {
            return Err(CniError::new(
                IFACE_EXISTS,
                format!("interface {:?} already exists in {}", a.ifname, netns.path),
            ));
        }
        return Err(CniError::netlink(
            format!("create veth {host_veth} <-> {}", a.ifname),
            e,
        ));
    }
    let host_l = link::link_by_name(host_h, host_veth)
        .await?
        .ok_or_else(|| CniError::netlink(host_veth, "vanished after creation"))?;
    let pod_l = link::link_by_name(pod_h, &a.ifname)
        .await?
        .ok_or_else(|| CniError::netlink(&a.ifname, "not found in the pod after creation"))?;
    let p = Plumbed {
        host_veth: host_veth.to_string(),
        host_index: host_l.header.index,
        pod_index: pod_l.header.index,
        host_mac: link::mac(&host_l),
        pod_mac: link::mac(&pod_l),
    };
    link::set_up(host_h, p.host_index).await?;
    link::set_up(pod_h, p.pod_index).await?;
    let pi = p.pod_index;
    link::add_neigh(pod_h, pi, IpAddr::V4(GATEWAY_V4), &p.host_mac).await?;
    link::add_route(pod_h, IpNet::host(IpAddr::V4(GATEWAY_V4)), None, pi).await?;
    let default4 = IpNet::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)
        .ok_or_else(|| CniError::netlink("default route", "bad prefix"))?;
    link::add_route(pod_h, default4, Some(IpAddr::V4(GATEWAY_V4)), pi).await?;
    Ok(p)
}

/// Phase 2 of ADD: the pod's /32 (/128) addresses, IPv6 gateway and default
/// route, extra IPAM routes; on the host a route and a permanent neighbour
/// entry per pod address (no ARP/ND on the pair at all), and forwarding.
async fn plumb_addrs(
    host_h: &Handle,
    pod_h: &Handle,
    p: &Plumbed,
    addrs: &[IpAddr],
    ipam: &CniOutput,
) -> CniResult<()> {
    let (hi, pi) = (p.host_index, p.pod_index);
    let has_v6 = addrs.iter().any(IpAddr::is_ipv6);
    for ip in addrs {
        link::add_addr(pod_h, pi, IpNet::host(*ip)).await?;
    }
    if has_v6 {
        link::add_neigh(pod_h, pi, IpAddr::V6(GATEWAY_V6), &p.host_mac).await?;
        let default6 = IpNet::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0)
            .ok_or_else(|| CniError::netlink("default route", "bad prefix"))?;
        link::add_route(pod_h, default6, Some(IpAddr::V6(GATEWAY_V6)), pi).await?;
    }
    // Extra routes from IPAM (the defaults are already there).
    for r in &ipam.routes {
        let Ok(dst) = r.dst.parse::<IpNet>() else {
            warn!("ignoring IPAM route {:?}", r.dst);
            continue;
        };
        if dst.is_default() || (!dst.is_ipv4() && !has_v6) {
            continue;
        }
        let gw = if dst.is_ipv4() {
            IpAddr::V4(GATEWAY_V4)
        } else {
            IpAddr::V6(GATEWAY_V6)
        };
        link::add_route(pod_h, dst.trunc(), Some(gw), pi).await?;
    }
    for ip in addrs {
        link::add_route(host_h, IpNet::host(*ip), None, hi).await?;
        link::add_neigh(host_h, hi, *ip, &p.pod_mac).await?;
    }
    link::ensure_sysctl("net/ipv4/ip_forward", "1")?;
    if has_v6 {
        link::ensure_sysctl("net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

fn build_result(
    conf: &NetConf,
    a: &AttachEnv,
    netns_path: &str,
    prev: CniOutput,
    ipam: &CniOutput,
    addrs: &[IpAddr],
    added: &Plumbed,
) -> CniOutput {
    let mut out = prev;
    let host_idx = out.interfaces.len();
    out.interfaces.push(Interface {
        name: added.host_veth.clone(),
        mac: format_mac(&added.host_mac),
        ..Default::default()
    });
    out.interfaces.push(Interface {
        name: a.ifname.clone(),
        mac: format_mac(&added.pod_mac),
        mtu: Some(conf.mtu),
        sandbox: netns_path.to_string(),
        ..Default::default()
    });
    let pod_idx = host_idx + 1;
    for ip in addrs {
        out.ips.push(IpConfig {
            address: IpNet::host(*ip).to_string(),
            gateway: Some(match ip {
                IpAddr::V4(_) => GATEWAY_V4.to_string(),
                IpAddr::V6(_) => GATEWAY_V6.to_string(),
            }),
            interface: Some(pod_idx),
            ..Default::default()
        });
    }
    out.routes.push(Route {
        dst: "0.0.0.0/0".into(),
        gw: Some(GATEWAY_V4.to_string()),
        ..Default::default()
    });
    let has_v6 = addrs.iter().any(IpAddr::is_ipv6);
    if has_v6 {
        out.routes.push(Route {
            dst: "::/0".into(),
            gw: Some(GATEWAY_V6.to_string()),
            ..Default::default()
        });
    }
    for r in &ipam.routes {
        if let Ok(dst) = r.dst.parse::<IpNet>()
            && !dst.is_default()
            && (dst.is_ipv4() || has_v6)
        {
            out.routes.push(Route {
                dst: dst.trunc().to_string(),
                gw: Some(if dst.is_ipv4() {
                    GATEWAY_V4.to_string()
                } else {
                    GATEWAY_V6.to_string()
                }),
                ..Default::default()
            });
        }
    }
    // The config's dns, else IPAM's, else what an earlier plugin said.
    let given = |d: &Option<Value>| {
        d.clone()
            .filter(|v| v.as_object().is_some_and(|m| !m.is_empty()))
    };
    if let Some(d) = given(&conf.dns).or_else(|| given(&ipam.dns)) {
        out.dns = Some(d);
    }
    out.for_version(&conf.cni_version, conf.version)
}

// ---------------------------------------------------------------- DEL

fn prev_ips(conf: &NetConf) -> Vec<IpAddr> {
    conf.prev_result
        .as_ref()
        .and_then(|v| CniOutput::from_value(v).ok())
        .map(|r| {
            r.ips
                .iter()
                .filter_map(|i| i.address.parse::<IpNet>().ok().map(|n| n.addr))
                .collect()
        })
        .unwrap_or_default()
}

fn cmd_del(conf: &NetConf, env: &Env) -> CniResult<()> {
    let a = AttachEnv::read(env, false)?;
    let store = Store::new(&conf.state_dir, &conf.name);
    let lock = store.lock()?;
    let rec = store.load(&a.container_id, &a.ifname);
    let host_veth = rec
        .as_ref()
        .map(|r| r.host_veth.clone())
        .unwrap_or_else(|| host_veth_name(&a.container_id, &a.ifname));
    let ips = rec
        .as_ref()
        .map(|r| r.ips.clone())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| prev_ips(conf));

    // IPAM DEL and the nft change run while the kernel deletes the link
    // (a veth deletion waits for an RCU grace period, ~15 ms here).
    let ipam = ipam_call(conf, env, &a.cni_path, "DEL", None)?.spawn(&ipam_config(conf))?;
    let others = store.count_all().saturating_sub(usize::from(rec.is_some()));
    let last = others == 0;
    let nft_p = if conf.ip_masq && (last || !ips.is_empty()) {
        Some(nft::spawn(&nft::del_script(&conf.nft_table, &ips, last))?)
    } else {
        None
    };

    let rt = runtime()?;
    let has_record = rec.is_some();
    let link_res = rt.block_on(async {
        let host_h = link::connect(None)?;
        if link::del_link_by_name(&host_h, &host_veth).await? {
            info!("deleted {host_veth}");
            return Ok(());
        }
        // No host end but a record says we made this attachment: make sure
        // no pod end is left either. (Without a record the interface is not
        // ours: an ADD that failed because it already existed is followed
        // by a DEL that must leave it alone.) A namespace that is gone, or
        // cannot be opened, is no error for DEL.
        if has_record
            && let Some(p) = &a.netns
            && let Ok(ns) = Netns::open(p)
        {
            let pod_h = link::connect(Some(&ns))?;
            link::del_link_by_name(&pod_h, &a.ifname).await?;
        }
        Ok::<_, CniError>(())
    });
    let ipam_res = ipam.wait();
    let nft_res = nft_p.map(nft::Pending::wait).unwrap_or(Ok(()));
    link_res?;
    ipam_res?;
    nft_res?;
    if conf.ip_masq && last {
        store.set_nft_rules(&conf.nft_table, None, &lock);
    }
    store.remove(&a.container_id, &a.ifname, &lock)?;
    Ok(())
}

// ---------------------------------------------------------------- CHECK

fn cmd_check(conf: &NetConf, env: &Env) -> CniResult<()> {
    if conf.version < Version::V0_4_0 {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!(
                "CHECK needs cniVersion 0.4.0 or later, the config has {}",
                conf.cni_version
            ),
        ));
    }
    let a = AttachEnv::read(env, true)?;
    let Some(prev) = &conf.prev_result else {
        return Err(CniError::config("field `prevResult` is required for CHECK"));
    };
    let prev = CniOutput::from_value(prev)
        .map_err(|e| CniError::new(crate::error::DECODE, format!("prevResult: {e}")))?;
    let netns_path = a.netns.clone().unwrap_or_default();
    let fail = |m: String| CniError::new(CHECK_FAILED, m);

    let pod_if_idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == a.ifname && !i.sandbox.is_empty())
        .ok_or_else(|| {
            fail(format!(
                "prevResult lists no interface {:?} in a sandbox",
                a.ifname
            ))
        })?;
    let want_mac = prev.interfaces[pod_if_idx].mac.clone();
    let ips: Vec<IpNet> = prev
        .ips
        .iter()
        .filter(|i| i.interface.is_none_or(|x| x == pod_if_idx))
        .filter_map(|i| i.address.parse().ok())
        .collect();
    if ips.is_empty() {
        return Err(fail("prevResult lists no address for the interface".into()));
    }

    let netns = Netns::open(&netns_path)
        .map_err(|e| CniError::env(format!("CNI_NETNS {netns_path:?} cannot be opened: {e}")))?;
    let rt = runtime()?;
    let store = Store::new(&conf.state_dir, &conf.name);
    let host_veth = store
        .load(&a.container_id, &a.ifname)
        .map(|r| r.host_veth)
        .unwrap_or_else(|| host_veth_name(&a.container_id, &a.ifname));

    rt.block_on(async {
        let pod_h = link::connect(Some(&netns))?;
        let host_h = link::connect(None)?;
        let pl = link::link_by_name(&pod_h, &a.ifname)
            .await?
            .ok_or_else(|| {
                fail(format!(
                    "interface {:?} is missing from {netns_path}",
                    a.ifname
                ))
            })?;
        if !link::is_up(&pl) {
            return Err(fail(format!("interface {:?} is down", a.ifname)));
        }
        if link::mtu(&pl) != Some(conf.mtu) {
            return Err(fail(format!(
                "interface {:?} has MTU {:?}, the config says {}",
                a.ifname,
                link::mtu(&pl),
                conf.mtu
            )));
        }
        if !want_mac.is_empty() && !format_mac(&link::mac(&pl)).eq_ignore_ascii_case(&want_mac) {
            return Err(fail(format!(
                "interface {:?} has another MAC than prevResult",
                a.ifname
            )));
        }
        let have = link::addrs(&pod_h, pl.header.index).await?;
        for ip in &ips {
            if !have
                .iter()
                .any(|h| h.addr == ip.addr && h.prefix == ip.prefix)
            {
                return Err(fail(format!("address {ip} is missing from {:?}", a.ifname)));
            }
        }
        for v6 in [false, true] {
            if !ips.iter().any(|i| i.addr.is_ipv6() == v6) {
                continue;
            }
            let gw = if v6 {
                IpAddr::V6(GATEWAY_V6)
            } else {
                IpAddr::V4(GATEWAY_V4)
            };
            let rs = link::routes(&pod_h, v6).await?;
            if !rs
                .iter()
                .any(|r| r.dst.is_default() && r.gw == Some(gw) && r.oif == Some(pl.header.index))
            {
                return Err(fail(format!(
                    "the default route via {gw} is missing in the pod"
                )));
            }
        }
        let hl = link::link_by_name(&host_h, &host_veth)
            .await?
            .ok_or_else(|| fail(format!("host interface {host_veth} is missing")))?;
        if !link::is_up(&hl) {
            return Err(fail(format!("host interface {host_veth} is down")));
        }
        for v6 in [false, true] {
            let rs = link::routes(&host_h, v6).await?;
            for ip in ips.iter().filter(|i| i.addr.is_ipv6() == v6) {
                let want = IpNet::host(ip.addr);
                if !rs
                    .iter()
                    .any(|r| r.dst == want && r.oif == Some(hl.header.index))
                {
                    return Err(fail(format!(
                        "the host route {want} dev {host_veth} is missing"
                    )));
                }
            }
        }
        Ok(())
    })?;

    ipam_call(conf, env, &a.cni_path, "CHECK", None)?.run(&ipam_config(conf))?;
    Ok(())
}

// ---------------------------------------------------------------- GC

fn ipam_speaks_1_1(conf: &NetConf, env: &Env, cni_path: &str) -> CniResult<bool> {
    let path = delegate::find_plugin(&conf.ipam_type, cni_path)?;
    Ok(delegate::supported_versions(&path, env, &conf.ipam_type)
        .iter()
        .any(|v| v == "1.1.0"))
}

fn need_1_1(conf: &NetConf, verb: &str) -> CniResult<()> {
    if conf.version < Version::V1_1_0 {
        return Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!(
                "{verb} needs cniVersion 1.1.0, the config has {}",
                conf.cni_version
            ),
        ));
    }
    Ok(())
}

fn cmd_gc(conf: &NetConf, env: &Env) -> CniResult<()> {
    need_1_1(conf, "GC")?;
    let cni_path = env
        .get_set("CNI_PATH")
        .ok_or_else(|| CniError::env("CNI_PATH is not set"))?
        .to_string();
    let Some(valid) = &conf.valid_attachments else {
        return Err(CniError::new(
            INVALID_CONFIG,
            "field `cni.dev/valid-attachments` is required for GC",
        ));
    };
    let valid: HashSet<(&str, &str)> = valid
        .iter()
        .map(
            |Attachment {
                 container_id,
                 ifname,
             }| (container_id.as_str(), ifname.as_str()),
        )
        .collect();
    let store = Store::new(&conf.state_dir, &conf.name);
    let lock = store.lock()?;
    let rt = runtime()?;
    let host_h = rt.block_on(async { link::connect(None) })?;
    let mut errors: Vec<String> = Vec::new();
    let mut freed: Vec<IpAddr> = Vec::new();
    for rec in store.list() {
        if valid.contains(&(rec.container_id.as_str(), rec.ifname.as_str())) {
            continue;
        }
        info!("GC: stale attachment {} {}", rec.container_id, rec.ifname);
        if let Err(e) = rt.block_on(link::del_link_by_name(&host_h, &rec.host_veth)) {
            errors.push(e.to_string());
            continue;
        }
        if let Err(e) = ipam_del(conf, env, &cni_path, Some((&rec.container_id, &rec.ifname))) {
            errors.push(format!("{} {}: {e}", rec.container_id, rec.ifname));
            continue;
        }
        match store.remove(&rec.container_id, &rec.ifname, &lock) {
            Ok(()) => freed.extend(rec.ips.iter().copied()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let last = store.count_all() == 0;
    if conf.ip_masq && (last || !freed.is_empty()) {
        match nft::apply(&nft::del_script(&conf.nft_table, &freed, last)) {
            Ok(()) if last => store.set_nft_rules(&conf.nft_table, None, &lock),
            Ok(()) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    drop(lock);

    // Forward GC to IPAM when it speaks 1.1 (host-local of Debian 12 does
    // not; the DELs above released what we knew of).
    match ipam_speaks_1_1(conf, env, &cni_path) {
        Ok(true) => {
            let mut cfg = conf.raw.clone();
            cfg.insert("cniVersion".into(), Value::String("1.1.0".into()));
            if let Err(e) =
                ipam_call(conf, env, &cni_path, "GC", None).and_then(|c| c.run(&cfg).map(|_| ()))
            {
                errors.push(e.to_string());
            }
        }
        Ok(false) => info!("IPAM {} has no GC (spec < 1.1.0): skipped", conf.ipam_type),
        Err(e) => errors.push(e.to_string()),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(
            CniError::new(crate::error::STATE, "GC could not clean everything")
                .with_details(errors.join("; ")),
        )
    }
}

// ---------------------------------------------------------------- STATUS

fn cmd_status(conf: &NetConf, env: &Env) -> CniResult<()> {
    need_1_1(conf, "STATUS")?;
    if !conf.ready_file.exists() {
        return Err(CniError::new(
            NOT_AVAILABLE,
            format!(
                "the WireHub agent is not ready: {} does not exist",
                conf.ready_file.display()
            ),
        ));
    }
    let cni_path = env
        .get_set("CNI_PATH")
        .ok_or_else(|| CniError::env("CNI_PATH is not set"))?
        .to_string();
    let not_avail = |e: CniError| {
        if e.code == NOT_AVAILABLE || e.code == crate::error::NOT_AVAILABLE_DEGRADED {
            e
        } else {
            CniError::new(NOT_AVAILABLE, e.msg).with_details(e.details.unwrap_or_default())
        }
    };
    if ipam_speaks_1_1(conf, env, &cni_path).map_err(not_avail)? {
        let mut cfg = ipam_config(conf);
        cfg.insert("cniVersion".into(), Value::String("1.1.0".into()));
        ipam_call(conf, env, &cni_path, "STATUS", None)?
            .run(&cfg)
            .map_err(not_avail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &[(&str, Value)]) -> Vec<u8> {
        let mut v = serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "wirehub",
            "type": "wirehub-cni",
            "podSubnet": "10.244.0.0/16",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}
        });
        for (k, x) in extra {
            v[*k] = x.clone();
        }
        serde_json::to_vec(&v).unwrap()
    }

    fn run(cmd: &str, extra_env: &[(&str, &str)], stdin: &[u8]) -> (i32, Value) {
        let mut e = vec![("CNI_COMMAND", cmd)];
        e.extend_from_slice(extra_env);
        let o = dispatch(&Env::from_pairs(e), stdin);
        let v = if o.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&o.stdout).unwrap()
        };
        (o.exit, v)
    }

    #[test]
    fn version_lists_all() {
        let (rc, v) = run("VERSION", &[], br#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(rc, 0);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        let (rc, v) = run("VERSION", &[], b"");
        assert_eq!(rc, 0);
        assert_eq!(v["cniVersion"], "1.1.0");
    }

    #[test]
    fn missing_or_unknown_command_is_4() {
        let o = dispatch(&Env::default(), b"{}");
        assert_eq!(o.exit, 1);
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["code"], 4);
        let (rc, v) = run("FROB", &[], &conf(&[]));
        assert_eq!((rc, v["code"].as_u64()), (1, Some(4)));
    }

    #[test]
    fn malformed_json_is_6_for_every_verb() {
        for cmd in ["ADD", "DEL", "CHECK", "GC", "STATUS"] {
            let (rc, v) = run(cmd, &[], b"{not json");
            assert_eq!(rc, 1);
            assert_eq!(v["code"], 6, "{cmd}");
            assert_eq!(v["cniVersion"], "1.1.0");
        }
    }

    #[test]
    fn unknown_version_is_1() {
        let (rc, v) = run("ADD", &[], &conf(&[("cniVersion", "0.2.0".into())]));
        assert_eq!((rc, v["code"].as_u64()), (1, Some(1)));
        let (_, v) = run("DEL", &[], &conf(&[("cniVersion", "7.0.0".into())]));
        assert_eq!(v["code"], 1);
    }

    #[test]
    fn invalid_config_is_7() {
        let (rc, v) = run("ADD", &[], &conf(&[("mtu", "big".into())]));
        assert_eq!((rc, v["code"].as_u64()), (1, Some(7)));
        assert!(v["msg"].as_str().unwrap().contains("mtu"));
    }

    const ENV_OK: &[(&str, &str)] = &[
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/nonexistent/netns"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent"),
    ];

    fn env_without(k: &str) -> Vec<(&'static str, &'static str)> {
        ENV_OK.iter().filter(|(n, _)| *n != k).copied().collect()
    }

    #[test]
    fn add_env_errors_are_4() {
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let (rc, v) = run("ADD", &env_without(missing), &conf(&[]));
            assert_eq!(rc, 1);
            assert_eq!(v["code"], 4, "missing {missing}: {v}");
            assert!(v["msg"].as_str().unwrap().contains(missing));
        }
        // A netns path that does not exist.
        let (_, v) = run("ADD", ENV_OK, &conf(&[]));
        assert_eq!(v["code"], 4);
        assert!(v["msg"].as_str().unwrap().contains("CNI_NETNS"));
        // Bad names.
        let mut e = env_without("CNI_IFNAME");
        e.push(("CNI_IFNAME", "a/b"));
        assert_eq!(run("ADD", &e, &conf(&[])).1["code"], 4);
        let mut e = env_without("CNI_CONTAINERID");
        e.push(("CNI_CONTAINERID", "../x"));
        assert_eq!(run("ADD", &e, &conf(&[])).1["code"], 4);
    }

    #[test]
    fn del_needs_no_netns_but_ids() {
        let (_, v) = run("DEL", &env_without("CNI_CONTAINERID"), &conf(&[]));
        assert_eq!(v["code"], 4);
        let (_, v) = run("DEL", &env_without("CNI_IFNAME"), &conf(&[]));
        assert_eq!(v["code"], 4);
    }

    #[test]
    fn check_needs_prev_result_and_0_4() {
        let (_, v) = run("CHECK", ENV_OK, &conf(&[]));
        assert_eq!(v["code"], 7);
        assert!(v["msg"].as_str().unwrap().contains("prevResult"));
        let (_, v) = run("CHECK", ENV_OK, &conf(&[("cniVersion", "0.3.1".into())]));
        assert_eq!(v["code"], 1);
        assert_eq!(v["cniVersion"], "0.3.1");
    }

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("whcni-plugin-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn fake_ipam(dir: &std::path::Path, versions: &str, status_rc: i32) {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("fake-ipam");
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\ncat >/dev/null\ncase \"$CNI_COMMAND\" in\n\
                 VERSION) echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[{versions}]}}';;\n\
                 STATUS) [ {status_rc} = 0 ] || {{ echo '{{\"code\":50,\"msg\":\"ipam down\"}}'; exit 1; }};;\n\
                 GC) echo gc >> \"{}/gc-called\";;\n\
                 esac\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn status_follows_ready_file_and_ipam() {
        let _serial = crate::spawn_lock();
        let d = tmp("status");
        fake_ipam(&d, "\"1.0.0\",\"1.1.0\"", 0);
        let ready = d.join("ready");
        let c = conf(&[
            ("readyFile", ready.display().to_string().into()),
            ("ipam", serde_json::json!({"type": "fake-ipam"})),
        ]);
        let path = d.display().to_string();
        let env = [("CNI_PATH", path.as_str())];
        let (rc, v) = run("STATUS", &env, &c);
        assert_eq!(rc, 1);
        assert_eq!(v["code"], 50);
        assert!(v["msg"].as_str().unwrap().contains("ready"));
        std::fs::write(&ready, "").unwrap();
        let (rc, v) = run("STATUS", &env, &c);
        assert_eq!((rc, v), (0, Value::Null));
        // An IPAM that says it is not available makes us not available.
        fake_ipam(&d, "\"1.1.0\"", 1);
        let (rc, v) = run("STATUS", &env, &c);
        assert_eq!((rc, v["code"].as_u64()), (1, Some(50)));
        // Older config versions have no STATUS.
        let c0 = conf(&[("cniVersion", "1.0.0".into())]);
        assert_eq!(run("STATUS", &env, &c0).1["code"], 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn status_default_ready_file_is_documented_path() {
        let c = NetConf::parse(&conf(&[])).unwrap();
        assert_eq!(c.ready_file, std::path::PathBuf::from("/run/wirehub/ready"));
    }

    #[test]
    fn gc_needs_attachments_and_forwards_to_ipam() {
        let _serial = crate::spawn_lock();
        let d = tmp("gc");
        fake_ipam(&d, "\"1.1.0\"", 0);
        let path = d.display().to_string();
        let env = [("CNI_PATH", path.as_str())];
        let base = [
            (
                "stateDir",
                Value::String(d.join("state").display().to_string()),
            ),
            ("ipMasq", Value::Bool(false)),
            (
                "nftTable",
                Value::String(format!("whcni-unit-{}", std::process::id())),
            ),
            ("ipam", serde_json::json!({"type": "fake-ipam"})),
        ];
        let (_, v) = run("GC", &env, &conf(&base));
        assert_eq!(v["code"], 7);
        let mut with = base.to_vec();
        with.push(("cni.dev/valid-attachments", serde_json::json!([])));
        let (rc, v) = run("GC", &env, &conf(&with));
        assert_eq!((rc, v), (0, Value::Null));
        assert!(d.join("gc-called").exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
