//! Server processes: running `initdb`-like programs, the watchdog that
//! owns a running postmaster (or PgBouncer), and [`start_and_wait`], which
//! starts one under its watchdog and probes it until it answers.
//!
//! The postmaster is started by a small shell (the watchdog) whose standard
//! input is a pipe held by the [`Watchdog`]. A line written to the pipe names
//! the signal the shell sends the postmaster (`INT` fast shutdown, `QUIT`
//! immediate, `KILL` crash). When the pipe closes without a line — the owning
//! test process exited in any way, including `panic=abort` or a `static`
//! cluster that is never dropped — the shell shuts the server down at once and
//! removes its directory. Where util-linux's `setpriv` is present, the
//! postmaster also gets `SIGKILL` if the shell itself is killed.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{ErrorKind, FixtureError};
use crate::user::ServerUser;
use crate::util::{START_TIMEOUT, read_log_since, tail};

/// `$1` is the postgres binary, the rest its arguments.
const WATCHDOG_SCRIPT: &str = r#"
exec 3<&0 </dev/null
pg=$1
shift
if [ -n "$PGROTATE_SETPRIV" ]; then
  "$PGROTATE_SETPRIV" --pdeathsig KILL "$pg" "$@" >&2 3<&- &
else
  "$pg" "$@" >&2 3<&- &
fi
pid=$!
echo "$pid"
(
  if read -r sig <&3; then
    kill -"$sig" "$pid" 2>/dev/null
  else
    kill -"${PGROTATE_VANISH_SIGNAL:-QUIT}" "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    if [ -n "$PGROTATE_CLEANUP" ]; then rm -rf "$PGROTATE_CLEANUP"; fi
  fi
) >/dev/null &
exec 3<&-
wait "$pid"
"#;

/// How to stop a postmaster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// `SIGINT`: fast shutdown, a clean checkpoint.
    Fast,
    /// `SIGQUIT`: immediate shutdown, crash recovery on next start.
    Immediate,
    /// `SIGKILL` to the postmaster alone: a crash.
    Kill,
    /// `SIGTERM`: PgBouncer's immediate shutdown (it ignores `SIGQUIT`,
    /// which a non-interactive shell's background jobs ignore anyway).
    Terminate,
}

impl Stop {
    fn signal(self) -> &'static str {
        match self {
            Stop::Fast => "INT",
            Stop::Immediate => "QUIT",
            Stop::Kill => "KILL",
            Stop::Terminate => "TERM",
        }
    }
}

/// A command for a server program: runs in `dir`, as `user`, without the
/// caller's `PG*` environment (which would redirect it elsewhere).
pub(crate) fn server_command(program: &Path, dir: &Path, user: Option<ServerUser>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).env("LC_ALL", "C");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") {
            cmd.env_remove(name);
        }
    }
    ServerUser::apply(user, &mut cmd);
    cmd
}

/// Runs `cmd` to completion off the async executor; fails with its output
/// when it exits unsuccessfully.
pub(crate) async fn run(mut cmd: Command, what: &str) -> Result<Output, FixtureError> {
    cmd.stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| FixtureError::io(format!("running {what}"), io::Error::other(e)))?
        .map_err(|e| FixtureError::io(format!("running {what}"), e))?;
    if output.status.success() {
        return Ok(output);
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    Err(FixtureError::new(
        ErrorKind::Command,
        format!("{what} failed ({}): {}", output.status, tail(&text, 4000)),
    ))
}

/// What the watchdog starts.
pub(crate) struct Launch<'a> {
    /// The `postgres` binary.
    pub(crate) postgres: &'a Path,
    /// Its arguments.
    pub(crate) args: Vec<OsString>,
    /// Working directory, and what to remove if the owner vanishes.
    pub(crate) dir: &'a Path,
    /// Where the server's stdout and stderr go.
    pub(crate) log: File,
    /// Who runs it.
    pub(crate) user: Option<ServerUser>,
    /// How to stop it at once: on drop, and when the owner vanishes.
    pub(crate) immediate: Stop,
}

/// A program [`start_and_wait`] starts, as its errors name it.
pub(crate) struct Startup<'a> {
    /// `postgres`, `pgbouncer`.
    name: &'a str,
    /// What it does once ready, for the timeout's message: `accept
    /// connections`.
    ready: &'a str,
    /// The log its output is appended to.
    log_path: &'a Path,
    /// Who owns the log (and runs the program).
    user: Option<ServerUser>,
    /// When to give up: the start of the first attempt plus
    /// [`START_TIMEOUT`].
    pub(crate) deadline: Instant,
    /// How long to sleep between two probes.
    poll: Duration,
}

impl<'a> Startup<'a> {
    /// Starting now: the deadline [`START_TIMEOUT`] away, probes 20 ms
    /// apart.
    pub(crate) fn new(
        name: &'a str,
        ready: &'a str,
        log_path: &'a Path,
        user: Option<ServerUser>,
    ) -> Startup<'a> {
        Startup {
            name,
            ready,
            log_path,
            user,
            deadline: Instant::now() + START_TIMEOUT,
            poll: Duration::from_millis(20),
        }
    }

    /// Sleeps `poll` between two probes.
    pub(crate) fn poll(self, poll: Duration) -> Startup<'a> {
        Startup { poll, ..self }
    }
}

/// How a start that did not fail outright ended.
pub(crate) enum Started<T> {
    /// The probe answered: the running program and the answer.
    Ready(Watchdog, T),
    /// The program exited before it was ready: what it logged since it was
    /// started (the caller retries or fails with it).
    Exited(String),
}

/// Opens (appends to) the log, starts the program `launch` builds around it,
/// and runs `probe` (at most 5 s each, `poll` apart) until it answers, the
/// program exits, or the deadline passes (an error with the log).
pub(crate) async fn start_and_wait<'a, T, Fut>(
    startup: &Startup<'_>,
    launch: impl FnOnce(File) -> Launch<'a>,
    mut probe: impl FnMut() -> Fut,
) -> Result<Started<T>, FixtureError>
where
    Fut: Future<Output = Option<T>>,
{
    let Startup { name, log_path, .. } = *startup;
    let log_start = std::fs::metadata(log_path).map_or(0, |m| m.len());
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| FixtureError::io(format!("opening the {name} log"), e))?;
    ServerUser::chown(startup.user, log_path)
        .map_err(|e| FixtureError::io(format!("handing the {name} log to the server user"), e))?;
    let mut watchdog = Watchdog::spawn(launch(log))
        .map_err(|e| FixtureError::io(format!("starting {name}"), e))?;
    while !watchdog.has_exited() {
        if let Ok(Some(answer)) = tokio::time::timeout(Duration::from_secs(5), probe()).await {
            return Ok(Started::Ready(watchdog, answer));
        }
        if Instant::now() >= startup.deadline {
            drop(watchdog);
            return Err(FixtureError::new(
                ErrorKind::Startup,
                format!(
                    "{name} did not {} within {START_TIMEOUT:?}; log:\n{}",
                    startup.ready,
                    read_log_since(log_path, log_start)
                ),
            ));
        }
        tokio::time::sleep(startup.poll).await;
    }
    Ok(Started::Exited(read_log_since(log_path, log_start)))
}

/// A running postmaster under its watchdog shell.
#[derive(Debug)]
pub(crate) struct Watchdog {
    shell: Child,
    control: Option<ChildStdin>,
    postmaster: u32,
    exited: bool,
    immediate: Stop,
}

impl Watchdog {
    /// Starts the postmaster; returns once its pid is known (not once it is
    /// ready).
    pub(crate) fn spawn(launch: Launch<'_>) -> io::Result<Watchdog> {
        let mut cmd = server_command(Path::new("/bin/sh"), launch.dir, launch.user);
        cmd.arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("pgrotate-testing-watchdog")
            .arg(launch.postgres)
            .args(launch.args)
            .env("PGROTATE_CLEANUP", launch.dir)
            .env("PGROTATE_VANISH_SIGNAL", launch.immediate.signal())
            .env("PGROTATE_SETPRIV", setpriv().unwrap_or(Path::new("")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(launch.log)
            // Its own process group: a terminal's Ctrl-C goes to the test
            // process, whose exit then stops the server through the pipe.
            .process_group(0);
        let mut shell = cmd.spawn()?;
        let control = shell.stdin.take();
        let mut line = String::new();
        let read = match shell.stdout.take() {
            Some(stdout) => BufReader::new(stdout).read_line(&mut line),
            None => Ok(0),
        };
        match (read, line.trim().parse::<u32>()) {
            (Ok(_), Ok(postmaster)) => Ok(Watchdog {
                shell,
                control,
                postmaster,
                exited: false,
                immediate: launch.immediate,
            }),
            (read, _) => {
                let _ = shell.kill();
                let _ = shell.wait();
                Err(read.err().unwrap_or_else(|| {
                    io::Error::other(format!("watchdog shell printed no pid: {line:?}"))
                }))
            }
        }
    }

    /// True once the postmaster (and so its shell) has exited.
    pub(crate) fn has_exited(&mut self) -> bool {
        if !self.exited {
            self.exited = !matches!(self.shell.try_wait(), Ok(None));
        }
        self.exited
    }

    /// Sends the postmaster `stop`'s signal. Only the first call has effect.
    pub(crate) fn signal(&mut self, stop: Stop) {
        if let Some(mut control) = self.control.take() {
            let _ = writeln!(control, "{}", stop.signal());
            let _ = control.flush();
        }
    }

    /// Waits up to `timeout` for the postmaster to exit, without blocking the
    /// executor.
    pub(crate) async fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Waits up to `timeout` for the postmaster to exit, blocking the thread
    /// (for `Drop`, inside or outside a runtime).
    pub(crate) fn wait_blocking(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Stops the postmaster `how`; falls back to `SIGKILL` after `timeout`.
    pub(crate) async fn stop(&mut self, how: Stop, timeout: Duration) {
        self.signal(how);
        if !self.wait(timeout).await {
            self.kill();
        }
    }

    /// `SIGKILL` to the postmaster and its shell, then reaps the shell.
    pub(crate) fn kill(&mut self) {
        let _ = Command::new("/bin/sh")
            .args(["-c", "kill -KILL \"$1\" 2>/dev/null", "sh"])
            .arg(self.postmaster.to_string())
            .stdin(Stdio::null())
            .status();
        let _ = self.shell.kill();
        let _ = self.shell.wait();
        self.exited = true;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.has_exited() {
            return;
        }
        self.signal(self.immediate);
        if !self.wait_blocking(Duration::from_secs(5)) {
            self.kill();
        }
    }
}

/// util-linux's `setpriv` when it knows `--pdeathsig`.
fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            ["/usr/bin/setpriv", "/bin/setpriv"]
                .iter()
                .map(PathBuf::from)
                .find(|path| {
                    Command::new(path)
                        .arg("--help")
                        .stdin(Stdio::null())
                        .output()
                        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("pdeathsig"))
                })
        })
        .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sleep 30` with default signal handling: a non-interactive shell
    /// starts background jobs with SIGINT and SIGQUIT ignored (postgres
    /// installs its own handlers; `sleep` needs GNU env to reset them).
    fn sleeper(dir: &Path) -> Watchdog {
        let log = File::create(dir.join("log")).unwrap();
        let dog = Watchdog::spawn(Launch {
            postgres: Path::new("/usr/bin/env"),
            args: vec![
                "--default-signal=INT,QUIT".into(),
                "sleep".into(),
                "30".into(),
            ],
            dir,
            log,
            user: None,
            immediate: Stop::Immediate,
        })
        .unwrap();
        // Signals sent before `env` has reset their handling would be lost.
        let comm = format!("/proc/{}/comm", dog.postmaster);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&comm).map_or(true, |c| c.trim() != "sleep") {
            assert!(Instant::now() < deadline, "sleep did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        dog
    }

    fn alive(pid: u32) -> bool {
        // A reaped process has no /proc entry; a zombie shows state Z.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    }

    #[test]
    fn signal_stops_the_child_and_keeps_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut dog = sleeper(dir.path());
        let pid = dog.postmaster;
        assert!(alive(pid));
        assert!(!dog.has_exited());
        dog.signal(Stop::Fast);
        assert!(dog.wait_blocking(Duration::from_secs(5)));
        assert!(!alive(pid));
        assert!(dir.path().exists());
    }

    #[test]
    fn closing_the_pipe_stops_the_child_and_removes_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut dog = sleeper(dir.path());
        let pid = dog.postmaster;
        drop(dog.control.take());
        assert!(dog.wait_blocking(Duration::from_secs(5)));
        assert!(!alive(pid));
        let deadline = Instant::now() + Duration::from_secs(5);
        while dir.path().exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!dir.path().exists());
    }

    #[test]
    fn killing_the_shell_kills_the_child_where_setpriv_exists() {
        if setpriv().is_none() {
            eprintln!("no setpriv with --pdeathsig here: nothing to check");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut dog = sleeper(dir.path());
        let pid = dog.postmaster;
        dog.shell.kill().unwrap();
        dog.shell.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(pid));
    }

    #[test]
    fn drop_stops_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let dog = sleeper(dir.path());
        let pid = dog.postmaster;
        drop(dog);
        assert!(!alive(pid));
    }
}
