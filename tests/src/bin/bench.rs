//! The agent's overhead on the hot paths it sits on, measured side by side:
//! the same workload in a container, with and without the agent, in
//! alternating rounds (ABBA order, so drift in the machine's load hits both
//! sides). Each round pairs one run without and one with the agent, back to
//! back; the overhead is the median of the rounds' ratios, which cancels
//! slow drift in a shared machine's speed better than comparing two medians.
//! The interquartile range of those ratios is printed as the noise. `cargo xtask bench` runs it on the host and
//! in a VM.
//!
//! `bench [--rounds R] [--exec-count N] [--open-count M] [--flood-count F] [--floods K]
//! [--only NAME]... [-- AGENT ARGS...]`
//!
//! `open-t` (only with `--only`) measures `open()` with the tracking programs
//! attached (`--track-writes always`, lsm backend): what hosts whose
//! containers run from roots that are not overlayfs pay. It is reported, not
//! held to a target. `open-m` (only with `--only`, signal backend) measures
//! `open()` with `--signal-mmap-check`, a program on every system call:
//! also reported without a target, which it misses. `open-v` (only with
//! `--only`, lsm backend) measures `open()` with 10,000 vShields loaded, each
//! shielding an image file from being opened, and also reports how long the
//! agent took to apply them (resolve the files and write the kernel maps),
//! held to 200 ms.
//!
//! `events` (by default, or with `--only events`) measures the audit
//! pipeline and the agent's memory: `--floods` times (5), each in a new
//! container, a program maps a drift file executable `--flood-count` times (a system call each, far
//! faster than the agent can write records), with the agent in audit mode
//! (`--signal-mmap-check` where the signal backend runs), the rate limit
//! off and a file sink: each mapping is a decision record from the ring
//! buffer to the JSON file, or counted as lost when the ring buffer is full.
//! It reports records written per second of the agent's own CPU time (user
//! and system, all threads: what one core spends per record; the median of
//! the floods is held to 200,000/s), the same per second of wall-clock time
//! with every agent thread pinned to one CPU and the floods to another (the
//! agent's one core kept busy; also held to 200,000/s), the records lost in
//! the ring buffer and dropped by the pipeline (with those written, every
//! decision), the agent's resident memory idle (after start-up, held to 30
//! MiB) and its peak during the floods (held to 64 MiB).
//!
//! `restarts` (by default, or with `--only restarts`) measures the gap a
//! restart leaves: a container tries a dropped binary in a loop while the
//! agent is killed (SIGKILL) and started again `--restarts` times (20) on
//! one pin directory. Every try that ran is an exec no agent decided
//! (target: 0). It also reports the time from start to ready, each start
//! adopting the maps the one before pinned.
//!
//! Prints a table and one JSON line per workload; exits 1 when an overhead
//! is above its target.

use std::{fmt::Write as _, process::ExitCode};

use anyhow::{Context as _, bail};
use enforcer_tests::{
    agent::{Agent, PinDir},
    container::{self, Image, Scratch},
    scenario::{DriftLoop, LoopOutcome, clean_exit_events},
};

/// Targets of the `events` measurement.
const EVENTS_PER_CPU_SECOND: f64 = 200_000.0;
const IDLE_RSS_MIB: f64 = 30.0;
const FLOOD_RSS_MIB: f64 = 64.0;

/// vShields of the `open-v` workload.
const VSHIELDS: usize = 10_000;
/// Target for applying them, milliseconds.
const APPLY_TARGET_MS: f64 = 200.0;

/// Adds `count` files to `image` and writes a policy with one vShield per
/// file (open); returns the policy's directory and path.
fn shielded(image: &Image, count: usize) -> anyhow::Result<(Scratch, String)> {
    let dir = image.root().join("opt/shielded");
    std::fs::create_dir_all(&dir)?;
    let scratch = Scratch::new("bench-policy")?;
    let mut policy = String::new();
    for index in 0..count {
        std::fs::write(dir.join(format!("f{index:05}")), b"x")?;
        write!(
            policy,
            "---\napiVersion: enforcer.dev/v1alpha1\nkind: VShield\nmetadata:\n  name: shield-{index}\n\
             spec:\n  vulnerability: CVE-2099-{number}\n  mode: enforce\n  \
             files: [/opt/shielded/f{index:05}]\n  operations: [open]\n",
            number = 10_000 + index
        )?;
    }
    let path = scratch.path().join("vshields.yaml");
    std::fs::write(&path, policy)?;
    Ok((scratch, path.display().to_string()))
}

struct Workload {
    name: &'static str,
    /// What one operation is.
    what: &'static str,
    script: String,
    /// Highest acceptable overhead, percent; `None` for a workload that is
    /// only reported.
    target: Option<f64>,
    /// Added to the agent's arguments.
    agent_args: Vec<String>,
    /// Run without `--only`.
    by_default: bool,
}

struct Options {
    rounds: usize,
    exec_count: u32,
    open_count: u32,
    /// Drift execs of each flood of the `events` measurement.
    flood_count: u32,
    /// Floods of the `events` measurement.
    floods: usize,
    /// Agent restarts of the `restarts` measurement.
    restarts: usize,
    /// Workloads to run; all when empty.
    only: Vec<String>,
    agent_args: Vec<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        rounds: 6,
        exec_count: 2000,
        open_count: 200_000,
        flood_count: 1_000_000,
        floods: 5,
        restarts: 20,
        only: Vec::new(),
        agent_args: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--rounds" => options.rounds = value()?.parse()?,
            "--exec-count" => options.exec_count = value()?.parse()?,
            "--open-count" => options.open_count = value()?.parse()?,
            "--flood-count" => options.flood_count = value()?.parse()?,
            "--floods" => options.floods = value()?.parse()?,
            "--restarts" => options.restarts = value()?.parse()?,
            "--only" => options.only.push(value()?),
            "--" => {
                options.agent_args = args.collect();
                break;
            }
            other => bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(options.rounds >= 2, "--rounds must be at least 2");
    anyhow::ensure!(options.floods >= 1, "--floods must be at least 1");
    Ok(options)
}

/// Runs `script` in a fresh container and returns the `ops_per_sec` it printed.
fn measure(image: &Image, script: &str) -> anyhow::Result<f64> {
    let run = container::run(image, script)?;
    anyhow::ensure!(run.status.success(), "workload failed: {run:#?}");
    run.value("ops_per_sec")
        .context("no ops_per_sec in the output")?
        .parse()
        .context("ops_per_sec")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        f64::midpoint(values[middle - 1], values[middle])
    } else {
        values[middle]
    }
}

/// The first and third quartiles of sorted `values` (nearest rank).
fn quartiles(sorted: &[f64]) -> (f64, f64) {
    let at = |fraction: f64| {
        let last = sorted.len().saturating_sub(1);
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank among a few dozen rounds"
        )]
        let rank = ((last as f64) * fraction).round() as usize;
        sorted.get(rank).copied().unwrap_or(f64::NAN)
    };
    (at(0.25), at(0.75))
}

/// What [`rounds`] measured.
struct Measured {
    without: Vec<f64>,
    with: Vec<f64>,
    backend: String,
    /// The `apply_ms` the agent logged for its vShields, per round.
    apply_ms: Vec<f64>,
}

/// Runs `workload` in `count` paired rounds; returns the rates without and
/// with the agent, round by round, and the backend the agent reported.
fn rounds(
    image: &Image,
    workload: &Workload,
    count: usize,
    agent_args: &[&str],
) -> anyhow::Result<Measured> {
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut backend = String::new();
    let mut apply_ms = Vec::new();
    for round in 0..count {
        // ABBA: rounds 0 and 3 start without the agent, 1 and 2 with it.
        let agent_first = matches!(round % 4, 1 | 2);
        for with_agent in [agent_first, !agent_first] {
            if !with_agent {
                without.push(measure(image, &workload.script)?);
                continue;
            }
            let agent = Agent::start(agent_args).map_err(|failure| anyhow::anyhow!("{failure}"))?;
            if let Some(line) = agent
                .log()
                .lines()
                .find(|line| line.contains("enforcer ready"))
            {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix("backend="))
                    .unwrap_or_default()
                    .clone_into(&mut backend);
            }
            if let Some(ms) = agent.log().lines().find_map(|line| {
                line.contains("vShields applied")
                    .then(|| {
                        line.split_whitespace()
                            .find_map(|word| word.strip_prefix("apply_ms="))
                    })
                    .flatten()
                    .and_then(|ms| ms.parse::<f64>().ok())
            }) {
                apply_ms.push(ms);
            }
            let rate = measure(image, &workload.script);
            let stopped = agent.stop()?;
            let events = clean_exit_events(&stopped);
            anyhow::ensure!(
                events.is_empty(),
                "the benchmark's image binaries were reported: {events:#?}"
            );
            with.push(rate?);
        }
    }
    Ok(Measured {
        without,
        with,
        backend,
        apply_ms,
    })
}

/// Prints how long applying the vShields took; returns whether it met the
/// target.
fn report_apply(apply_ms: &[f64], backend: &str) -> bool {
    let rounds = apply_ms.len();
    let mut sorted = apply_ms.to_vec();
    let median = median(&mut sorted);
    let (low, high) = quartiles(&sorted);
    let met = median <= APPLY_TARGET_MS;
    println!(
        "apply  {median:>12.1} ms to resolve {VSHIELDS} vShields and write the maps (IQR {low:.1}..{high:.1} ms, \
         target {APPLY_TARGET_MS} ms, {rounds} agent starts){}",
        if met { "" } else { "  ABOVE TARGET" }
    );
    println!(
        "BENCH {{\"workload\":\"apply\",\"backend\":\"{backend}\",\"vshields\":{VSHIELDS},\
         \"apply_ms\":{median:.1},\"iqr_ms\":[{low:.1},{high:.1}],\"target_ms\":{APPLY_TARGET_MS},\
         \"rounds\":{rounds},\"met\":{met}}}"
    );
    met
}

/// Prints one workload's row and JSON line; returns whether it met its target.
fn report(workload: &Workload, without: &[f64], with: &[f64], backend: &str) -> bool {
    let rounds = without.len();
    let mut overheads: Vec<f64> = without
        .iter()
        .zip(with)
        .map(|(without, with)| (without / with - 1.0) * 100.0)
        .collect();
    let overhead = median(&mut overheads);
    let (low, high) = quartiles(&overheads);
    let (without, with) = (median(&mut without.to_vec()), median(&mut with.to_vec()));
    let met = workload.target.is_none_or(|target| overhead <= target);
    let target = workload
        .target
        .map_or_else(|| "none".to_owned(), |target| format!("{target:.1}%"));
    println!(
        "{:<6} {:>12.0}/s {:>12.0}/s {:>8.2}% {:>15} {:>7}  {:>6}  {}{}",
        workload.name,
        without,
        with,
        overhead,
        format!("{low:.1}..{high:.1}%"),
        target,
        rounds,
        workload.what,
        if met { "" } else { "  ABOVE TARGET" }
    );
    println!(
        "BENCH {{\"workload\":\"{}\",\"backend\":\"{backend}\",\"without_per_sec\":{without:.1},\
         \"with_per_sec\":{with:.1},\"overhead_percent\":{overhead:.2},\
         \"iqr_percent\":[{low:.2},{high:.2}],\"target_percent\":{},\"rounds\":{rounds},\
         \"met\":{met}}}",
        workload.name,
        workload
            .target
            .map_or_else(|| "null".to_owned(), |target| target.to_string())
    );
    met
}

/// Every workload; `shielded_policy` is the policy of `open-v`.
fn workloads(options: &Options, image: &Image, shielded_policy: &str) -> [Workload; 6] {
    [
        Workload {
            name: "exec",
            what: "fork + exec of a static image binary + wait",
            script: format!("/bin/probe exec-loop {} /bin/true", options.exec_count),
            target: Some(3.0),
            agent_args: Vec::new(),
            by_default: true,
        },
        Workload {
            name: "exec-d",
            what: "fork + exec of a dynamic image binary (loader maps its libraries) + wait",
            script: format!(
                "/bin/probe exec-loop {} /bin/probe noop",
                options.exec_count
            ),
            target: Some(3.0),
            agent_args: Vec::new(),
            by_default: true,
        },
        Workload {
            name: "open",
            what: "open() + close() of an image file",
            script: format!("/bin/probe open-loop {} /bin/busybox", options.open_count),
            target: Some(3.0),
            agent_args: Vec::new(),
            by_default: true,
        },
        Workload {
            name: "open-t",
            what: "open() + close() of an image file, write tracking attached",
            script: format!("/bin/probe open-loop {} /bin/busybox", options.open_count),
            target: None,
            agent_args: vec!["--track-writes".to_owned(), "always".to_owned()],
            by_default: false,
        },
        Workload {
            name: "open-m",
            what: "open() + close() of an image file, signal backend's mmap check attached",
            script: format!("/bin/probe open-loop {} /bin/busybox", options.open_count),
            target: None,
            agent_args: vec!["--signal-mmap-check".to_owned()],
            by_default: false,
        },
        Workload {
            name: "open-v",
            what: "open() + close() of an image file, 10,000 vShields loaded (open)",
            script: format!("/bin/probe open-loop {} /bin/busybox", options.open_count),
            target: Some(5.0),
            agent_args: if options.only.iter().any(|name| name == "open-v") {
                vec![
                    "--policy".to_owned(),
                    shielded_policy.to_owned(),
                    "--image-store".to_owned(),
                    image.root().display().to_string(),
                ]
            } else {
                Vec::new()
            },
            by_default: false,
        },
    ]
}

fn run() -> anyhow::Result<bool> {
    let options = options()?;
    let probe = std::env::current_exe()?
        .parent()
        .map(|dir| dir.join("probe"))
        .filter(|probe| probe.exists())
        .context("the probe tool is not next to this binary")?;
    let image = Image::with_dynamic(&probe, "probe")?;
    let (_policy_dir, shielded_policy) = if options.only.iter().any(|name| name == "open-v") {
        let (dir, path) = shielded(&image, VSHIELDS)?;
        (Some(dir), path)
    } else {
        (None, String::new())
    };
    let workloads = workloads(&options, &image, &shielded_policy);
    if let Some(unknown) = options.only.iter().find(|name| {
        !matches!(name.as_str(), "events" | "restarts")
            && !workloads
                .iter()
                .any(|workload| workload.name == name.as_str())
    }) {
        bail!("--only {unknown}: no such workload");
    }
    let agent_args: Vec<&str> = options.agent_args.iter().map(String::as_str).collect();
    let mut all_met = true;
    println!(
        "{:<6} {:>14} {:>14} {:>9} {:>15} {:>7}  rounds  operation",
        "", "without agent", "with agent", "overhead", "noise (IQR)", "target"
    );
    let selected = workloads.iter().filter(|workload| {
        if options.only.is_empty() {
            workload.by_default
        } else {
            options.only.iter().any(|name| name == workload.name)
        }
    });
    for workload in selected {
        let mut agent_args = agent_args.clone();
        agent_args.extend(workload.agent_args.iter().map(String::as_str));
        let measured = rounds(&image, workload, options.rounds, &agent_args)?;
        all_met &= report(
            workload,
            &measured.without,
            &measured.with,
            &measured.backend,
        );
        if !measured.apply_ms.is_empty() {
            all_met &= report_apply(&measured.apply_ms, &measured.backend);
        }
    }
    if options.only.is_empty() || options.only.iter().any(|name| name == "events") {
        all_met &= events(&image, &agent_args, options.flood_count, options.floods)?;
    }
    if options.only.is_empty() || options.only.iter().any(|name| name == "restarts") {
        all_met &= restarts(&agent_args, options.restarts)?;
    }
    Ok(all_met)
}

/// The `restarts` measurement (see the module documentation).
fn restarts(agent_args: &[&str], count: usize) -> anyhow::Result<bool> {
    use std::time::{Duration, Instant};
    let pins = PinDir::new();
    let pin_dir = pins.path().to_str().context("a UTF-8 pin directory")?;
    let mut args = agent_args.to_vec();
    args.extend(["--pin-dir", pin_dir]);
    let mut agent = Agent::start(&args).map_err(|failure| anyhow::anyhow!("{failure}"))?;
    let looping = DriftLoop::start()?;
    std::thread::sleep(Duration::from_secs(1));
    let mut ready_ms = Vec::with_capacity(count);
    for _ in 0..count {
        drop(agent.stop_with(libc::SIGKILL)?);
        let started = Instant::now();
        agent = Agent::start(&args).map_err(|failure| anyhow::anyhow!("{failure}"))?;
        ready_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            agent.log().contains("adopted_maps=true"),
            "a restart did not adopt the pinned maps:\n{}",
            agent.log()
        );
    }
    let LoopOutcome { tries, ran, .. } = looping.finish()?;
    drop(agent.stop()?);
    pins.unload()?;
    let ready = median(&mut ready_ms.clone());
    let (fastest, slowest) = ready_ms
        .iter()
        .fold((f64::MAX, 0.0_f64), |(low, high), ms| {
            (low.min(*ms), high.max(*ms))
        });
    let met = ran == 0;
    println!(
        "restarts: {count} kills and starts while a container tried a dropped binary {tries} times: \
         {ran} ran (target 0){}; start to ready {ready:.0} ms (median; {fastest:.0} to {slowest:.0}), \
         adopting the pinned maps",
        if met { "" } else { "  MISSED" }
    );
    println!(
        "BENCH {{\"workload\":\"restarts\",\"restarts\":{count},\"tries\":{tries},\"ran\":{ran},\
         \"target_ran\":0,\"ready_ms_median\":{ready:.1},\"ready_ms_min\":{fastest:.1},\
         \"ready_ms_max\":{slowest:.1},\"met\":{met}}}"
    );
    Ok(met)
}

/// The `events` measurement (see the module documentation).
fn events(image: &Image, agent_args: &[&str], flood: u32, floods: usize) -> anyhow::Result<bool> {
    let scratch = Scratch::new("bench-events")?;
    // Rotated as a node would rotate it, which also keeps the kernel's
    // writeback of gigabytes of records from competing with the agent for
    // the cores: a rotated file is deleted before its pages are written out.
    let sink = format!(
        "file:{},max-size=256MiB,keep=1",
        scratch.path().join("audit.json").display()
    );
    let mut args = agent_args.to_vec();
    args.extend([
        "--mode",
        "audit",
        "--signal-mmap-check",
        "--rate-limit",
        "off",
        "--sink",
        &sink,
    ]);
    let agent = Agent::start(&args).map_err(|failure| anyhow::anyhow!("{failure}"))?;
    // Start-up's allocations (BTF, the first container scan) settle.
    std::thread::sleep(std::time::Duration::from_secs(3));
    // The agent on one core, the flood on another: records per second of
    // wall-clock time are then what one core of the agent's writes.
    let pinned = pin_apart(agent.pid())?;
    let idle_mib = kib_to_mib(agent.memory_kib("VmRSS")?);
    // One flood's rate varies by half from run to run on a shared 2-core
    // machine (the flooder, the agent's two threads and the kernel's
    // writeback share the cores): the median of several floods is held to
    // the target, and their range is printed as the noise.
    let mut rates = Vec::new();
    let (mut written, mut cpu, mut wall) = (0, 0.0, 0.0);
    for _ in 0..floods {
        let (written_before, cpu_before) = (agent.flush_sinks()?, agent.cpu_seconds()?);
        let started = std::time::Instant::now();
        let run = container::run(
            image,
            &format!("cp /bin/busybox /tmp/flooder && /bin/probe mmap-loop {flood} /tmp/flooder"),
        )?;
        anyhow::ensure!(run.status.success(), "the flood failed: {run:#?}");
        let flood_written = agent.flush_sinks()? - written_before;
        wall += started.elapsed().as_secs_f64();
        let flood_cpu = agent.cpu_seconds()? - cpu_before;
        #[expect(clippy::cast_precision_loss, reason = "a count of records")]
        rates.push(flood_written as f64 / flood_cpu.max(0.01));
        written += flood_written;
        cpu += flood_cpu;
    }
    if let Some(pinned) = &pinned {
        set_affinity(0, &pinned.before)?;
    }
    let lost = counter(&agent, "kernel.events_lost")?;
    let dropped = counter(&agent, "pipeline.dropped")?;
    let peak_mib = kib_to_mib(agent.memory_kib("VmHWM")?);
    agent.stop()?;
    let per_cpu_second = median(&mut rates);
    let (lowest, highest) = (rates[0], rates[rates.len() - 1]);
    #[expect(clippy::cast_precision_loss, reason = "a count of records")]
    let per_wall_second = written as f64 / wall.max(0.01);
    let met = [
        per_cpu_second >= EVENTS_PER_CPU_SECOND,
        idle_mib <= IDLE_RSS_MIB,
        peak_mib <= FLOOD_RSS_MIB,
        pinned.is_none() || per_wall_second >= EVENTS_PER_CPU_SECOND,
    ];
    let mark = |met: bool| if met { "" } else { "  TARGET MISSED" };
    println!(
        "events {written} records in {cpu:.2} s of agent CPU over {floods} floods: median \
         {per_cpu_second:.0}/s per core (floods {lowest:.0}..{highest:.0}; target >= \
         {EVENTS_PER_CPU_SECOND:.0}){}; {lost} more lost in the full ring buffer and \
         {dropped} dropped while the writer was behind (counted)",
        mark(met[0])
    );
    if let Some(Pinned {
        agent: agent_cpu,
        flood: flood_cpu,
        ..
    }) = &pinned
    {
        println!(
            "events on one core: the agent's threads pinned to CPU {agent_cpu}, the floods to \
             CPU {flood_cpu}: {per_wall_second:.0} records written per second of wall-clock \
             time (target >= {EVENTS_PER_CPU_SECOND:.0}){}, the agent's core {:.0} % busy",
            mark(met[3]),
            100.0 * cpu / wall.max(0.01)
        );
    }
    println!(
        "memory agent RSS idle {idle_mib:.1} MiB (target <= {IDLE_RSS_MIB}){}, \
         peak during the floods {peak_mib:.1} MiB (target <= {FLOOD_RSS_MIB}){}",
        mark(met[1]),
        mark(met[2])
    );
    println!(
        "BENCH {{\"workload\":\"events\",\"records\":{written},\"agent_cpu_s\":{cpu:.3},\
         \"floods\":{floods},\"per_cpu_second\":{per_cpu_second:.0},\
         \"per_cpu_second_range\":[{lowest:.0},{highest:.0}],\
         \"target_per_cpu_second\":{EVENTS_PER_CPU_SECOND},\
         \"lost\":{lost},\"dropped\":{dropped},\
         \"pinned\":{},\"per_wall_second\":{per_wall_second:.0},\
         \"idle_rss_mib\":{idle_mib:.1},\"peak_rss_mib\":{peak_mib:.1},\
         \"met\":{}}}",
        pinned.is_some(),
        met.iter().all(|met| *met)
    );
    Ok(met.iter().all(|met| *met))
}

/// Where the `events` measurement ran: the agent's CPU, the floods' CPU,
/// and this process's CPUs before, to go back to.
struct Pinned {
    agent: usize,
    flood: usize,
    before: libc::cpu_set_t,
}

/// Pins every thread of process `pid` to one CPU this process may run on
/// (threads it makes later inherit that) and this process, whose children
/// run the floods, to another; `None` (nothing pinned) with only one CPU.
fn pin_apart(pid: u32) -> anyhow::Result<Option<Pinned>> {
    // SAFETY: cpu_set_t is plain bits; sched_getaffinity fills it.
    let mut before: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `before` is a writable cpu_set_t of the size given.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut before) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading this process's CPUs");
    }
    // SAFETY: CPU_ISSET reads within the set for indices below CPU_SETSIZE.
    let mut allowed =
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &before) });
    let (Some(flood), Some(agent)) = (allowed.next(), allowed.next()) else {
        println!("events: one CPU only: the agent and the floods share it");
        return Ok(None);
    };
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: libc::pid_t = task?.file_name().to_string_lossy().parse()?;
        set_affinity(tid, &cpu_set(agent))?;
    }
    set_affinity(0, &cpu_set(flood))?;
    Ok(Some(Pinned {
        agent,
        flood,
        before,
    }))
}

/// The set of `cpu` alone.
fn cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain bits, all zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` came from a set of CPU_SETSIZE bits.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set
}

fn set_affinity(tid: libc::pid_t, set: &libc::cpu_set_t) -> anyhow::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    let done = unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), set) };
    if done != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning thread {tid}"));
    }
    Ok(())
}

/// Counter `name` of `enforcer status`.
fn counter(agent: &Agent, name: &str) -> anyhow::Result<u64> {
    let output = std::process::Command::new(enforcer_tests::agent::binary())
        .args(["status", "--json", "--socket"])
        .arg(agent.control_socket())
        .output()?;
    let status: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    status["counters"][name]
        .as_u64()
        .with_context(|| format!("no {name} in enforcer status"))
}

#[expect(clippy::cast_precision_loss, reason = "memory sizes")]
fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{median, quartiles};

    #[test]
    fn medians() {
        assert!((median(&mut [3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median(&mut [4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < f64::EPSILON);
    }

    #[test]
    fn quartiles_of_sorted_values() {
        assert_eq!(quartiles(&[1.0, 2.0, 3.0, 4.0, 5.0]), (2.0, 4.0));
        assert_eq!(quartiles(&[7.0]), (7.0, 7.0));
    }
}
