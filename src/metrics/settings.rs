//! The metrics settings (environment only) and the errors they can cause.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{parse_bool, ConfigError, Env};

/// Variable naming the textfile.
pub(crate) const FILE_VAR: &str = "SSM_COSMOVISOR_METRICS_FILE";
/// Variable naming the endpoint's address.
pub(crate) const ADDR_VAR: &str = "SSM_COSMOVISOR_METRICS_ADDR";
/// Variable allowing a non-loopback endpoint.
pub(crate) const REMOTE_VAR: &str = "SSM_COSMOVISOR_METRICS_ALLOW_REMOTE";

/// Where metrics go; both off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MetricsSettings {
    /// The textfile for node_exporter (absolute, `*.prom`).
    pub(crate) file: Option<PathBuf>,
    /// The `/metrics` endpoint's address.
    pub(crate) addr: Option<SocketAddr>,
    /// Serve the endpoint on a non-loopback address.
    pub(crate) allow_remote: bool,
}

/// A metrics setting that cannot be used. Each names its variable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MetricsError {
    /// A value that does not parse, or is not allowed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The endpoint would listen beyond this host.
    #[error("{ADDR_VAR}={addr} is not a loopback address: the endpoint has no authentication and anyone who reaches it learns this validator's role, lease and delivery history. Use 127.0.0.1:PORT (and let a local Prometheus agent or node_exporter forward), or set {REMOTE_VAR}=true to serve it on {addr} knowingly")]
    NonLoopback { addr: SocketAddr },
    /// The endpoint cannot listen.
    #[error("{ADDR_VAR}={addr}: cannot listen there: {source}{}", if source.kind() == std::io::ErrorKind::AddrInUse { "; another process already uses that port: pick a free one" } else { "" })]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The textfile names a directory.
    #[error("{FILE_VAR}={path:?} is a directory; name a file in it, e.g. {}", path.join("ssm-cosmovisor.prom").display())]
    IsDirectory { path: PathBuf },
    /// The textfile's directory, or one above it, is not safe to write in.
    #[error("{FILE_VAR}={path:?}: refusing to write the metrics file there: {why}. Use a directory reached without symlinks, owned by root or this process's user, writable by others only with the sticky bit, below directories only root may replace (e.g. /var/lib/prometheus/node-exporter, root:root 0755)")]
    UnsafeDir {
        /// The textfile's path.
        path: PathBuf,
        /// What is wrong, naming the directory.
        why: String,
    },
    /// The textfile cannot be written.
    #[error("{FILE_VAR}={path:?}: cannot write the metrics file: {source}; {hint}")]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
        /// What to do.
        hint: &'static str,
    },
    /// A thread of the textfile's writer or of the endpoint could not be started.
    #[error("{var}: cannot start the thread that {does}: {source}")]
    Thread {
        /// The variable that asked for it.
        var: &'static str,
        /// What the thread does.
        does: &'static str,
        source: std::io::Error,
    },
    /// `init` ran twice (a bug).
    #[error("metrics were set up twice")]
    Twice,
}

impl MetricsSettings {
    /// Reads the settings; an invalid value is an error naming its variable.
    pub(crate) fn from_env(env: &dyn Env) -> Result<MetricsSettings, MetricsError> {
        let file = match env.setting(FILE_VAR)? {
            None => None,
            Some(v) => Some(parse_file(&v)?),
        };
        let allow_remote = match env.setting(REMOTE_VAR)? {
            Some(v) => parse_bool(REMOTE_VAR, &v)?,
            None => false,
        };
        let addr = match env.setting(ADDR_VAR)? {
            None => None,
            Some(v) => {
                let addr: SocketAddr = v.trim().parse().map_err(|_| ConfigError::Invalid {
                    name: ADDR_VAR,
                    value: v.clone(),
                    hint: "use IP:PORT, e.g. 127.0.0.1:9464 or [::1]:9464 (no host names)".into(),
                })?;
                if !addr.ip().is_loopback() && !allow_remote {
                    return Err(MetricsError::NonLoopback { addr });
                }
                Some(addr)
            }
        };
        Ok(MetricsSettings {
            file,
            addr,
            allow_remote,
        })
    }

    /// Neither a file nor an endpoint.
    pub(crate) fn is_off(&self) -> bool {
        self.file.is_none() && self.addr.is_none()
    }
}

fn parse_file(v: &str) -> Result<PathBuf, MetricsError> {
    let p = PathBuf::from(v);
    let invalid = |hint: &str| ConfigError::Invalid {
        name: FILE_VAR,
        value: v.to_string(),
        hint: hint.into(),
    };
    if !p.is_absolute() {
        return Err(invalid(
            "use an absolute path, e.g. /var/lib/prometheus/node-exporter/ssm-cosmovisor.prom",
        )
        .into());
    }
    if p.is_dir() {
        return Err(MetricsError::IsDirectory { path: p });
    }
    if p.extension().and_then(|e| e.to_str()) != Some("prom") {
        return Err(invalid(
            "node_exporter's textfile collector reads only files ending in .prom; name it e.g. ssm-cosmovisor.prom",
        )
        .into());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    struct Map(HashMap<&'static str, &'static str>);
    impl Env for Map {
        fn var_os(&self, name: &str) -> Option<OsString> {
            self.0.get(name).map(OsString::from)
        }
    }

    fn from(pairs: &[(&'static str, &'static str)]) -> Result<MetricsSettings, MetricsError> {
        MetricsSettings::from_env(&Map(pairs.iter().copied().collect()))
    }

    #[test]
    fn off_by_default_and_each_bad_value_names_its_variable() {
        assert!(from(&[]).unwrap().is_off());
        let ok = from(&[(FILE_VAR, "/tmp/x/m.prom"), (ADDR_VAR, "127.0.0.1:9464")]).unwrap();
        assert_eq!(ok.addr, Some("127.0.0.1:9464".parse().unwrap()));
        for (pairs, want) in [
            (&[(FILE_VAR, "m.prom")][..], FILE_VAR),
            (&[(FILE_VAR, "/tmp/m.txt")][..], ".prom"),
            (&[(FILE_VAR, "/tmp")][..], "is a directory"),
            (&[(ADDR_VAR, "localhost:9464")][..], ADDR_VAR),
            (&[(ADDR_VAR, "0.0.0.0:9464")][..], REMOTE_VAR),
            (
                &[(ADDR_VAR, "10.0.0.1:9464"), (REMOTE_VAR, "maybe")][..],
                REMOTE_VAR,
            ),
        ] {
            let e = from(pairs).unwrap_err().to_string();
            assert!(e.contains(want), "{pairs:?}: {e}");
        }
        let remote = from(&[(ADDR_VAR, "0.0.0.0:9464"), (REMOTE_VAR, "true")]).unwrap();
        assert!(remote.allow_remote);
    }
}
