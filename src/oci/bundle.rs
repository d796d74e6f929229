//! `rafs bundle`: an OCI runtime bundle (`DIR/config.json`, a runc spec,
//! and an empty `DIR/rootfs`) from a rafs image's config, so that
//! `runc run -b DIR` starts the image's own command once the user has put
//! an overlay of the rafs mount on `DIR/rootfs` (README, "Running a
//! container").
//!
//! From the image config: the process arguments (`Entrypoint` then
//! `Cmd`), `Env`, `User` (`uid[:gid]`, or names looked up in the rootfs'
//! `/etc/passwd` and `/etc/group` when one is given) and `WorkingDir`.
//! The rest is runc's default spec: a writable root, `/proc`, `/dev`,
//! `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/sys` (read-only), the cgroup
//! tree, fresh pid, ipc, uts, mount and network namespaces (nothing shared
//! with the host), the default capability set, masked and read-only
//! kernel paths.
//!
//! `rafs bundle --podman MNT` writes no bundle: it prints the `podman run`
//! arguments for the same process ([`podman_args`], shell-quoted by
//! [`shell_join`]): `--env K=V`... `--user UID:GID --workdir DIR --rootfs
//! MNT:O ARGS...`, where ARGS is Entrypoint then Cmd (with `--rootfs`
//! podman has no image config of its own, so the whole command line is
//! given).

use super::OciError;
use serde_json::{json, Value};
use std::path::Path;

/// The process an image config asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Entrypoint then Cmd.
    pub args: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Working directory (absolute).
    pub cwd: String,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The process of image config `config` (JSON). `rootfs`, if given,
/// resolves user and group names.
pub fn process_of(config: &[u8], rootfs: Option<&Path>) -> Result<Process, OciError> {
    let bad = |why: String| OciError::invalid("image config", why);
    let v: Value = serde_json::from_slice(config).map_err(|e| bad(e.to_string()))?;
    let c = v.get("config").cloned().unwrap_or(Value::Null);
    let mut args = strings(c.get("Entrypoint"));
    args.extend(strings(c.get("Cmd")));
    if args.is_empty() {
        return Err(bad("no Entrypoint and no Cmd: nothing to run".into()));
    }
    let mut env = strings(c.get("Env"));
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let user = c.get("User").and_then(Value::as_str).unwrap_or("");
    let (uid, gid) = user_ids(user, rootfs)?;
    let cwd = match c.get("WorkingDir").and_then(Value::as_str) {
        Some(d) if d.starts_with('/') => d.to_owned(),
        Some("") | None => "/".to_owned(),
        Some(d) => return Err(bad(format!("WorkingDir {d:?} is not absolute"))),
    };
    Ok(Process {
        args,
        env,
        uid,
        gid,
        cwd,
    })
}

/// `user[:group]` as ids; names need `rootfs`.
fn user_ids(user: &str, rootfs: Option<&Path>) -> Result<(u32, u32), OciError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(id) => (id, lookup(rootfs, "etc/passwd", 2, |f| f[2] == u).ok()),
        Err(_) => {
            let f = lookup(rootfs, "etc/passwd", 3, |f| f[0] == u)?;
            (parse_id(&f[2], user)?, Some(f))
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(id) => id,
            Err(_) => parse_id(&lookup(rootfs, "etc/group", 2, |f| f[0] == g)?[2], user)?,
        },
        None => match primary {
            Some(f) if f.len() > 3 => parse_id(&f[3], user)?,
            _ => 0,
        },
    };
    Ok((uid, gid))
}

fn parse_id(s: &str, user: &str) -> Result<u32, OciError> {
    s.parse()
        .map_err(|_| OciError::invalid("image config", format!("User {user:?}: bad id {s:?}")))
}

/// The first line of `rootfs/file` with more than `min` `:`-fields that
/// `pick` accepts, split.
fn lookup(
    rootfs: Option<&Path>,
    file: &str,
    min: usize,
    pick: impl Fn(&[String]) -> bool,
) -> Result<Vec<String>, OciError> {
    let Some(root) = rootfs else {
        return Err(OciError::invalid(
            "image config",
            "User is a name: give --rootfs (the mount) to look it up",
        ));
    };
    let path = root.join(file);
    let text = std::fs::read_to_string(&path).map_err(OciError::io(&path))?;
    text.lines()
        .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
        .find(|f| f.len() > min && pick(f))
        .ok_or_else(|| OciError::invalid(path.display().to_string(), "no such user or group"))
}

/// The runc spec running `p` with root `rootfs_path` (relative to the
/// bundle).
pub fn spec(p: &Process, rootfs_path: &str) -> Value {
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": p.uid, "gid": p.gid},
            "args": p.args,
            "env": p.env,
            "cwd": p.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": rootfs_path, "readonly": false},
        "hostname": "rafs",
        "mounts": mounts(),
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

fn mounts() -> Value {
    json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    ])
}

/// Writes `dir/config.json` (the spec for image config `config`) and
/// creates `dir/rootfs`.
pub fn write_bundle(config: &[u8], dir: &Path, rootfs: Option<&Path>) -> Result<(), OciError> {
    let p = process_of(config, rootfs)?;
    let root = dir.join("rootfs");
    std::fs::create_dir_all(&root).map_err(OciError::io(&root))?;
    let text = serde_json::to_vec_pretty(&spec(&p, "rootfs"))
        .map_err(|e| OciError::invalid("runtime spec", e.to_string()))?;
    super::pull::write_atomic(dir, "config.json", &text)
}

/// The `podman run` arguments that run image config `config`'s process
/// on an overlay (`:O`) of the mount `mnt`. `rootfs` resolves names.
pub fn podman_args(
    config: &[u8],
    mnt: &Path,
    rootfs: Option<&Path>,
) -> Result<Vec<String>, OciError> {
    let p = process_of(config, rootfs)?;
    let mut out = Vec::new();
    for e in &p.env {
        out.push("--env".to_owned());
        out.push(e.clone());
    }
    out.push("--user".to_owned());
    out.push(format!("{}:{}", p.uid, p.gid));
    out.push("--workdir".to_owned());
    out.push(p.cwd);
    out.push("--rootfs".to_owned());
    out.push(format!("{}:O", mnt.display()));
    out.extend(p.args);
    Ok(out)
}

/// `args` as one POSIX shell word list: each argument single-quoted
/// unless it is made only of characters no shell treats specially.
pub fn shell_join(args: &[String]) -> String {
    let quote = |a: &String| {
        let plain = !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
        if plain {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    args.iter().map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_from_config() {
        let c = br#"{"config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],
            "Env":["A=1"],"User":"1000:50","WorkingDir":"/srv"}}"#;
        let p = process_of(c, None).unwrap();
        assert_eq!(p.args, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(p.env[0], "A=1");
        assert!(p.env[1].starts_with("PATH="));
        assert_eq!((p.uid, p.gid, p.cwd.as_str()), (1000, 50, "/srv"));
        let s = spec(&p, "rootfs");
        assert_eq!(s["process"]["user"]["uid"], 1000);
        assert_eq!(s["root"]["path"], "rootfs");
        assert_eq!(s["root"]["readonly"], false);
        assert!(process_of(br#"{"config":{}}"#, None).is_err());
        assert!(process_of(br#"{"config":{"Cmd":["x"],"User":"bob"}}"#, None).is_err());
        assert!(process_of(br#"{"config":{"Cmd":["x"],"WorkingDir":"rel"}}"#, None).is_err());
        assert!(process_of(b"not json", None).is_err());
    }

    #[test]
    fn podman_arguments_quoted() {
        let c = br#"{"config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo \"it's $HOME\""],
            "Env":["A=x y","PATH=/bin"],"User":"7:8","WorkingDir":"/srv"}}"#;
        let a = podman_args(c, Path::new("/mnt/app"), None).unwrap();
        assert_eq!(
            a,
            [
                "--env",
                "A=x y",
                "--env",
                "PATH=/bin",
                "--user",
                "7:8",
                "--workdir",
                "/srv",
                "--rootfs",
                "/mnt/app:O",
                "/bin/sh",
                "-c",
                "echo \"it's $HOME\""
            ]
        );
        assert_eq!(
            shell_join(&a),
            r#"--env 'A=x y' --env PATH=/bin --user 7:8 --workdir /srv --rootfs /mnt/app:O /bin/sh -c 'echo "it'\''s $HOME"'"#
        );
        assert_eq!(shell_join(&[String::new()]), "''");
        // The shell reads back exactly the arguments.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\n' {}", shell_join(&a)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), a.join("\n") + "\n");
    }

    #[test]
    fn names_from_the_rootfs() {
        let d = std::env::temp_dir().join(format!("rafs-bundle-test-{}", std::process::id()));
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(
            d.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nbob:x:1001:1002::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let ids = |u: &str| user_ids(u, Some(&d)).map_err(|e| e.to_string());
        assert_eq!(ids("bob"), Ok((1001, 1002)));
        assert_eq!(ids("bob:staff"), Ok((1001, 50)));
        assert_eq!(ids("1001"), Ok((1001, 1002)));
        assert_eq!(ids("7:8"), Ok((7, 8)));
        assert!(ids("alice").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
