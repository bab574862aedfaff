//! The syslog sink against a real rsyslog daemon: one agent writes every
//! record to rsyslog's local socket, UDP and TCP inputs at once; each input
//! writes what it parsed (priority, app name, pid, message id, message) to
//! a file of its own, and each file must hold exactly the records the agent
//! wrote to stdout, in RFC 5424 as rsyslog parsed it. Userspace only: runs
//! on the host; the emulated VMs skip it.

use std::{
    net::{TcpListener, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::Agent,
    container::{self, Image, Scratch},
    require, serial,
};

/// A free port for both UDP and TCP (rsyslog binds them itself).
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("a TCP port");
        let port = tcp.local_addr().expect("its address").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Rsyslog {
    child: Child,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts rsyslogd in the foreground with inputs on `dir/log`, UDP and TCP
/// `port`, each written to `dir/INPUT.log`.
fn rsyslog(dir: &Path, port: u16) -> Rsyslog {
    let rsyslogd = require::program("/usr/sbin/rsyslogd", "rsyslog");
    let d = dir.display();
    let config = format!(
        r#"global(workDirectory="{d}" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{d}/log" UseSpecialParser="off" RateLimit.Interval="0" UsePIDFromSystem="off")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{port}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="fields" type="string" string="%pri% %app-name% %procid% %msgid% %msg%\n")
if $inputname == "imuxsock" then action(type="omfile" file="{d}/unix.log" template="fields")
if $inputname == "imudp" then action(type="omfile" file="{d}/udp.log" template="fields")
if $inputname == "imtcp" then action(type="omfile" file="{d}/tcp.log" template="fields")
"#
    );
    let conf = dir.join("rsyslog.conf");
    std::fs::write(&conf, config).expect("writing rsyslog.conf");
    let child = Command::new(rsyslogd)
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdout(Stdio::null())
        .spawn()
        .expect("starting rsyslogd");
    let daemon = Rsyslog { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(dir.join("log").exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()) {
        assert!(
            Instant::now() < deadline,
            "rsyslogd did not open its inputs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
}

/// The records of `file`: (priority, app name, pid, message id, record).
fn received(file: &Path) -> Vec<(String, String, String, String, serde_json::Value)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.splitn(5, ' ').collect();
            let record = serde_json::from_str(fields[4].trim())
                .unwrap_or_else(|error| panic!("{error}: {line}"));
            (
                fields[0].to_owned(),
                fields[1].to_owned(),
                fields[2].to_owned(),
                fields[3].to_owned(),
                record,
            )
        })
        .collect()
}

#[test]
fn records_reach_rsyslog_over_the_local_socket_udp_and_tcp() {
    let _serial = serial();
    if !require::root() || !require::not_emulated("the syslog sink is userspace") {
        return;
    }
    let dir = Scratch::new("rsyslog").expect("a scratch directory");
    let port = free_port();
    let _daemon = rsyslog(dir.path(), port);
    let unix = format!("syslog:unix:{}/log", dir.path().display());
    let udp = format!("syslog:udp:127.0.0.1:{port},facility=local3");
    let tcp = format!("syslog:tcp:127.0.0.1:{port},app-name=node-guard");
    let agent = Agent::start(&[
        "--sink", "stdout", "--sink", &unix, "--sink", &udp, "--sink", &tcp,
    ])
    .unwrap_or_else(|failure| panic!("{failure}"));
    let image = Image::busybox().expect("building the image");
    let run = container::run(&image, "cp /bin/busybox /tmp/dropped && /tmp/dropped true")
        .expect("running the container");
    agent.flush().expect("flushing");
    let pid = agent.pid().to_string();
    let stopped = agent.stop().expect("stopping the agent");
    let written: Vec<serde_json::Value> = stopped
        .policy_events
        .iter()
        .chain(&stopped.events)
        .chain(&stopped.accounting)
        .cloned()
        .collect();
    assert!(
        stopped
            .events
            .iter()
            .any(|event| event["file"]["path"] == "/tmp/dropped"),
        "no drift event: {run:?}\n{}",
        stopped.stderr
    );

    for (input, facility, app_name) in [
        ("unix", 16, "enforcer"),
        ("udp", 19, "enforcer"),
        ("tcp", 16, "node-guard"),
    ] {
        let file = dir.path().join(format!("{input}.log"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = received(&file);
        while got.len() < written.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            got = received(&file);
        }
        let records: Vec<_> = got.iter().map(|(.., record)| record.clone()).collect();
        let mut expected = written.clone();
        // The agent writes its start record first; compare as sets of the
        // same length when the order between stdout's two lists is unknown.
        expected.sort_by_key(ToString::to_string);
        let mut sorted = records.clone();
        sorted.sort_by_key(ToString::to_string);
        assert_eq!(sorted, expected, "{input}: {got:#?}\n{}", stopped.stderr);
        for (priority, app, procid, msgid, record) in &got {
            let (severity, id) = if record["event"]["dataset"] == "enforcer.policy" {
                (6, "policy")
            } else {
                (4, "drift")
            };
            assert_eq!(
                priority,
                &(facility * 8 + severity).to_string(),
                "{input}: {record}"
            );
            assert_eq!((app.as_str(), msgid.as_str()), (app_name, id), "{input}");
            assert_eq!(procid, &pid, "{input}");
        }
    }
}
