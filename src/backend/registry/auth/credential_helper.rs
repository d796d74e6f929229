//! Docker credential helpers (`docker-credential-NAME get`), run for
//! [`super`]'s credential lookup: which helper a `config.json` names for a
//! host, running it as an untrusted program (found on `PATH`, the host on
//! stdin, bounded output, a time limit after which its process group is
//! killed) and parsing its answer.

use super::{auths_key_matches, Credentials, EnvLookup};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a credential helper may run before it is killed.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a credential helper may write on stdout (or stderr).
pub const HELPER_OUTPUT_LIMIT: u64 = 64 << 10;

/// What a credential helper's stdout says when it has nothing for the host
/// (docker-credential-helpers' `ErrCredentialsNotFound`).
const NOT_FOUND: &str = "credentials not found";

/// A credential helper that failed. None of these carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The name in `config.json` cannot name a program.
    #[error("credential helper {helper:?}: not a valid helper name")]
    BadName {
        /// The helper name.
        helper: String,
    },
    /// No `docker-credential-<name>` on `PATH`.
    #[error("credential helper docker-credential-{helper}: not found on PATH")]
    NotFound {
        /// The helper name.
        helper: String,
    },
    /// It could not be started or talked to.
    #[error("credential helper docker-credential-{helper}: {source}")]
    Io {
        /// The helper name.
        helper: String,
        /// What failed.
        source: std::io::Error,
    },
    /// It ran too long and was killed.
    #[error("credential helper docker-credential-{helper}: no answer within {secs} s, killed")]
    Timeout {
        /// The helper name.
        helper: String,
        /// The time limit.
        secs: u64,
    },
    /// It wrote more than [`HELPER_OUTPUT_LIMIT`] bytes.
    #[error("credential helper docker-credential-{helper}: more than {limit} bytes of output")]
    TooMuchOutput {
        /// The helper name.
        helper: String,
        /// The limit.
        limit: u64,
    },
    /// It exited with an error other than "credentials not found".
    #[error("credential helper docker-credential-{helper} failed ({status}): {message}")]
    Failed {
        /// The helper name.
        helper: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The start of what it said (stderr, else stdout).
        message: String,
    },
    /// Its answer is not the JSON of the helper protocol.
    #[error("credential helper docker-credential-{helper}: bad answer: {why}")]
    BadReply {
        /// The helper name.
        helper: String,
        /// What is wrong (never the answer itself).
        why: String,
    },
    /// It answered with an identity token, which rafs cannot use.
    #[error(
        "credential helper docker-credential-{helper} gave an identity token (user <token>): \
         rafs does not trade identity tokens for access tokens; log in with a user and \
         password or pass --registry-user/--registry-password"
    )]
    IdentityToken {
        /// The helper name.
        helper: String,
    },
}

/// The credential helper a docker `config.json` names for `host`, and the
/// server address to ask it for: `credHelpers.<host>` (an exact key first,
/// then URL forms and Docker Hub aliases), else `credsStore`. `None`: no
/// helper, use `auths`.
pub fn docker_config_helper(json: &[u8], host: &str) -> Result<Option<(String, String)>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let server = if crate::backend::registry::is_docker_hub(host) {
        "https://index.docker.io/v1/".to_owned()
    } else {
        host.to_owned()
    };
    if let Some(helpers) = doc.get("credHelpers").and_then(|h| h.as_object()) {
        let mut entries: Vec<_> = helpers
            .iter()
            .filter(|(k, _)| auths_key_matches(k, host))
            .collect();
        entries.sort_by_key(|(k, _)| k.as_str() != host);
        for (key, v) in entries {
            let name = v
                .as_str()
                .ok_or_else(|| format!("credHelpers.{key} is not a string"))?;
            if !name.is_empty() {
                return Ok(Some((name.to_owned(), server)));
            }
        }
    }
    match doc.get("credsStore") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some((s.clone(), server))),
        Some(_) => Err("credsStore is not a string".into()),
    }
}

/// Parses a credential helper's answer to `get`.
pub fn parse_helper_reply(helper: &str, out: &[u8]) -> Result<Credentials, HelperError> {
    let bad = |why: &str| HelperError::BadReply {
        helper: helper.to_owned(),
        why: why.to_owned(),
    };
    let doc: serde_json::Value = serde_json::from_slice(out).map_err(|_| bad("not JSON"))?;
    let field = |k: &str| doc.get(k).and_then(|v| v.as_str());
    let user = field("Username").ok_or_else(|| bad("no Username string"))?;
    let secret = field("Secret").ok_or_else(|| bad("no Secret string"))?;
    if user == "<token>" {
        return Err(HelperError::IdentityToken {
            helper: helper.to_owned(),
        });
    }
    if user.is_empty() && secret.is_empty() {
        return Err(bad("empty Username and Secret"));
    }
    Ok(Credentials {
        user: user.to_owned(),
        password: secret.to_owned(),
    })
}

/// `docker-credential-<helper>` in `PATH` (of `env`).
fn find_helper(helper: &str, env: EnvLookup<'_>) -> Result<PathBuf, HelperError> {
    use std::os::unix::fs::PermissionsExt;
    let valid = !helper.is_empty()
        && helper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
    if !valid {
        return Err(HelperError::BadName {
            helper: helper.to_owned(),
        });
    }
    let path = env("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let file = format!("docker-credential-{helper}");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(&file))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| HelperError::NotFound {
            helper: helper.to_owned(),
        })
}

/// Reads at most `HELPER_OUTPUT_LIMIT + 1` bytes of `r` on a thread and
/// sends them (tagged) on `tx`.
fn spawn_reader(mut r: impl Read + Send + 'static, tag: u8, tx: mpsc::Sender<(u8, Vec<u8>)>) {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut r).take(HELPER_OUTPUT_LIMIT + 1).read_to_end(&mut buf);
        let _ = tx.send((tag, buf));
    });
}

/// Kills the helper's whole process group and reaps it.
fn kill_helper(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `docker-credential-<helper> get` with `server` on stdin: the
/// credentials, or `None` if it has none for `server`.
pub fn run_helper(
    helper: &str,
    server: &str,
    env: EnvLookup<'_>,
    timeout: Duration,
) -> Result<Option<Credentials>, HelperError> {
    use std::os::unix::process::CommandExt;
    let prog = find_helper(helper, env)?;
    let io = |source| HelperError::Io {
        helper: helper.to_owned(),
        source,
    };
    let mut cmd = Command::new(&prog);
    cmd.arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(path) = env("PATH") {
        cmd.env("PATH", path);
    }
    let mut child = cmd.spawn().map_err(io)?;
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel();
    if let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) {
        spawn_reader(out, 1, tx.clone());
        spawn_reader(err, 2, tx);
    }
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that does not read its input is not an error here.
        let _ = stdin.write_all(server.as_bytes());
    }
    let outcome = collect_helper(&mut child, &rx, deadline);
    let (status, out, err) = match outcome {
        Ok(v) => v,
        Err(too_much) => {
            kill_helper(&mut child);
            return Err(if too_much {
                HelperError::TooMuchOutput {
                    helper: helper.to_owned(),
                    limit: HELPER_OUTPUT_LIMIT,
                }
            } else {
                HelperError::Timeout {
                    helper: helper.to_owned(),
                    secs: timeout.as_secs(),
                }
            });
        }
    };
    if status.success() {
        return parse_helper_reply(helper, &out).map(Some);
    }
    let said = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    let (out, err) = (said(&out), said(&err));
    if out.contains(NOT_FOUND) || err.contains(NOT_FOUND) {
        return Ok(None);
    }
    let message = if err.is_empty() { out } else { err };
    Err(HelperError::Failed {
        helper: helper.to_owned(),
        status,
        message: message.chars().take(200).collect(),
    })
}

/// Waits until the helper exited and both its outputs are read, polling
/// until `deadline`: `(status, stdout, stderr)`, or `Err(true)` when an
/// output is over the limit, `Err(false)` at the deadline.
type HelperOutput = (std::process::ExitStatus, Vec<u8>, Vec<u8>);
fn collect_helper(
    child: &mut std::process::Child,
    rx: &mpsc::Receiver<(u8, Vec<u8>)>,
    deadline: Instant,
) -> Result<HelperOutput, bool> {
    let (mut out, mut err, mut status) = (None, None, None);
    loop {
        if status.is_none() {
            status = child.try_wait().map_err(|_| false)?;
        }
        if let (Some(s), Some(o), Some(e)) = (status, &mut out, &mut err) {
            return Ok((s, std::mem::take(o), std::mem::take(e)));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(false);
        }
        // Wake on an output arriving, or every 10 ms to look at the child.
        if let Ok((tag, buf)) = rx.recv_timeout((deadline - now).min(Duration::from_millis(10))) {
            if buf.len() as u64 > HELPER_OUTPUT_LIMIT {
                return Err(true);
            }
            *(if tag == 1 { &mut out } else { &mut err }) = Some(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::registry::auth::resolve_with;
    use crate::backend::{BackendError, BackendOptions};

    /// A temp dir holding `docker-credential-<name>` scripts, and an env
    /// whose PATH is that dir then the system's.
    struct Helpers(tempfile::TempDir);

    impl Helpers {
        fn new() -> Helpers {
            Helpers(tempfile::tempdir().unwrap())
        }
        fn add(&self, name: &str, body: &str) {
            use std::os::unix::fs::PermissionsExt;
            let p = self.0.path().join(format!("docker-credential-{name}"));
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        fn env(&self) -> impl Fn(&str) -> Option<String> {
            let path = format!("{}:/usr/bin:/bin", self.0.path().display());
            move |k| (k == "PATH").then(|| path.clone())
        }
        /// A helper answering `user` and the host it was asked for.
        fn answering(&self, name: &str, user: &str) {
            self.add(
                name,
                &format!(r#"read -r host; printf '{{"ServerURL":"%s","Username":"{user}","Secret":"%s"}}' "$host" "$host""#),
            );
        }
    }

    #[test]
    fn helper_replies() {
        let c =
            parse_helper_reply("x", br#"{"ServerURL":"h","Username":"u","Secret":"s"}"#).unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("u", "s"));
        let e =
            parse_helper_reply("x", br#"{"Username":"<token>","Secret":"rt-secret"}"#).unwrap_err();
        assert!(matches!(e, HelperError::IdentityToken { .. }));
        assert!(!e.to_string().contains("rt-secret"));
        for bad in [
            &b"nope"[..],
            b"{}",
            br#"{"Username":"u"}"#,
            br#"{"Username":"","Secret":""}"#,
        ] {
            let e = parse_helper_reply("x", bad).unwrap_err();
            assert!(matches!(e, HelperError::BadReply { .. }), "{e}");
            assert!(e.to_string().contains("docker-credential-x"), "{e}");
        }
    }

    #[test]
    fn which_helper_a_config_names() {
        let json = br#"{"credHelpers":{"reg.a":"ecr-login","https://reg.b/v1/":"b"},
            "credsStore":"desktop","auths":{"reg.a":{"auth":"dTpw"}}}"#;
        let h = |host: &str| docker_config_helper(json, host).unwrap();
        assert_eq!(h("reg.a"), Some(("ecr-login".into(), "reg.a".into())));
        assert_eq!(h("reg.b"), Some(("b".into(), "reg.b".into())));
        assert_eq!(h("reg.c"), Some(("desktop".into(), "reg.c".into())));
        assert_eq!(
            h("docker.io"),
            Some(("desktop".into(), "https://index.docker.io/v1/".into()))
        );
        let auths_only = br#"{"credsStore":"","auths":{}}"#;
        assert_eq!(docker_config_helper(auths_only, "reg.a").unwrap(), None);
        assert!(docker_config_helper(br#"{"credsStore":3}"#, "h").is_err());
        assert!(docker_config_helper(br#"{"credHelpers":{"h":1}}"#, "h").is_err());
    }

    #[test]
    fn helper_precedence_over_auths_and_under_flags() {
        let helpers = Helpers::new();
        helpers.answering("one", "from-one");
        helpers.answering("store", "from-store");
        helpers.add(
            "empty",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        let opts = BackendOptions {
            docker_config: Some(cfg.clone()),
            ..BackendOptions::default()
        };
        let env = helpers.env();
        let get = |host: &str| {
            resolve_with(host, &opts, &env)
                .unwrap()
                .map(|c| (c.user, c.password))
        };
        let auths = r#""auths":{"h1":{"username":"file","password":"f"},"h2":{"username":"file","password":"f"}}"#;
        std::fs::write(
            &cfg,
            format!(r#"{{"credHelpers":{{"h1":"one"}},"credsStore":"store",{auths}}}"#),
        )
        .unwrap();
        assert_eq!(get("h1"), Some(("from-one".into(), "h1".into())));
        assert_eq!(get("h2"), Some(("from-store".into(), "h2".into())));
        // A store that has nothing hides `auths` (as docker does).
        std::fs::write(&cfg, format!(r#"{{"credsStore":"empty",{auths}}}"#)).unwrap();
        assert_eq!(get("h1"), None);
        std::fs::write(&cfg, format!(r#"{{{auths}}}"#)).unwrap();
        assert_eq!(get("h1"), Some(("file".into(), "f".into())));
        // Flags win over every helper, which is then not run.
        std::fs::write(&cfg, r#"{"credsStore":"missing"}"#).unwrap();
        assert!(
            matches!(resolve_with("h1", &opts, &env), Err(BackendError::Config(m)) if m.contains("docker-credential-missing"))
        );
        let flags = BackendOptions {
            registry_user: Some("flag".into()),
            registry_password: Some("p".into()),
            ..opts.clone()
        };
        assert_eq!(
            resolve_with("h1", &flags, &env).unwrap().unwrap().user,
            "flag"
        );
    }

    #[test]
    fn failing_helpers_are_typed_errors() {
        let helpers = Helpers::new();
        let env = helpers.env();
        let run = |name: &str, t: u64| run_helper(name, "h", &env, Duration::from_millis(t));
        helpers.add("broken", "echo 'keychain locked' >&2; exit 3");
        let e = run("broken", 10_000).unwrap_err();
        assert!(
            matches!(&e, HelperError::Failed { message, .. } if message == "keychain locked"),
            "{e}"
        );
        assert!(e.to_string().contains("docker-credential-broken"), "{e}");
        helpers.add("hang", "exec sleep 600");
        let started = Instant::now();
        let e = run("hang", 300).unwrap_err();
        assert!(matches!(e, HelperError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(20));
        // A child that keeps stdout open after the helper exited.
        helpers.add("orphan", "sleep 600 &\necho '{}'");
        assert!(matches!(
            run("orphan", 300),
            Err(HelperError::Timeout { .. })
        ));
        helpers.add("chatty", "head -c 200000 /dev/zero");
        assert!(matches!(
            run("chatty", 10_000),
            Err(HelperError::TooMuchOutput { .. })
        ));
        assert!(matches!(
            run("absent", 10_000),
            Err(HelperError::NotFound { .. })
        ));
        assert!(matches!(
            run("../x", 10_000),
            Err(HelperError::BadName { .. })
        ));
        helpers.add(
            "quiet",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        assert_eq!(run("quiet", 10_000).unwrap(), None);
        helpers.add("tok", r#"echo '{"Username":"<token>","Secret":"x"}'"#);
        assert!(matches!(
            run("tok", 10_000),
            Err(HelperError::IdentityToken { .. })
        ));
    }
}
