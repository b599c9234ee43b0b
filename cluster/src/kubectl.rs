//! The pinned kubectl, run with the administrator's kubeconfig, for the harnesses that install
//! other projects as their guides do (`kubectl apply` of their CRDs and objects): KEDA's,
//! Karpenter's.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::ControlPlane;
use crate::control_plane::{ClusterError, Result, io};

/// Runs `kubectl ARGS` (with `stdin` piped in when given); its standard output, or
/// [`ClusterError::Kubectl`] with what it printed on stderr.
pub fn run(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut command = plane.kubectl()?;
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(io("run kubectl"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes())
            .map_err(io("write to kubectl"))?;
    }
    let output = child.wait_with_output().map_err(io("run kubectl"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(ClusterError::Kubectl {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Applies every CRD file of folder `dir` (server-side: some are larger than the annotation a
/// client-side apply keeps) and waits until each CRD named in `names` is established.
pub async fn apply_crds(
    plane: &ControlPlane,
    dir: &Path,
    names: &[&str],
    within: Duration,
) -> Result<()> {
    run(
        plane,
        &["apply", "--server-side", "-f", &dir.display().to_string()],
        None,
    )?;
    let deadline = Instant::now() + within;
    for name in names {
        // Right after the apply a CRD may have no conditions at all, which `kubectl wait`
        // reports as an error rather than waiting: ask again until it is established.
        loop {
            let established = run(
                plane,
                &[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=5s",
                    &format!("crd/{name}"),
                ],
                None,
            );
            match established {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}
