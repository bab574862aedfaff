//! A webhook receiver for the integration tests: `receiver ADDRESS OUTPUT`
//! listens on ADDRESS (`127.0.0.1:0` picks a port), prints the address it
//! bound on its first stdout line, and answers every POST of a JSON array
//! with 200 after appending the array's elements to OUTPUT, one JSON object
//! per line, and `SEQUENCE COUNT` (the batch's `X-Enforcer-Sequence` and its
//! number of records) to `OUTPUT.batches`. A body that is not a JSON array,
//! or not sent as `application/json`, gets 400 and is not stored.
//!
//! It keeps no state of its own, so it can be killed at any point and
//! started again on the same address (std's listener sets `SO_REUSEADDR`):
//! the test checks from the files that nothing came twice.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(address), Some(output), None) = (args.next(), args.next(), args.next()) else {
        bail!("usage: receiver ADDRESS OUTPUT_FILE");
    };
    let address = address.to_str().context("ADDRESS is not UTF-8")?;
    let output = PathBuf::from(output);
    let server =
        tiny_http::Server::http(address).map_err(|error| anyhow::anyhow!("{address}: {error}"))?;
    let bound = server.server_addr().to_ip().context("not an IP listener")?;
    println!("{bound}");
    std::io::stdout().flush()?;
    let mut records = append(&output)?;
    let mut batches = append(&batches_path(&output))?;
    for mut request in server.incoming_requests() {
        let header = |name: &'static str| {
            request
                .headers()
                .iter()
                .find(|header| header.field.equiv(name))
                .map(|header| header.value.as_str().to_owned())
        };
        let sequence = header("X-Enforcer-Sequence");
        let json = header("Content-Type").is_some_and(|value| value == "application/json");
        let mut body = Vec::new();
        let read = request.as_reader().read_to_end(&mut body);
        let parsed = serde_json::from_slice::<Vec<serde_json::Value>>(&body);
        let status = match (read, parsed, sequence) {
            (Ok(_), Ok(array), Some(sequence)) if json => {
                let mut lines = String::new();
                for record in &array {
                    lines.push_str(&serde_json::to_string(record)?);
                    lines.push('\n');
                }
                // Stored before the answer: a receiver killed in between
                // has the batch, and the agent sends it again.
                records.write_all(lines.as_bytes())?;
                writeln!(batches, "{sequence} {}", array.len())?;
                200
            }
            (read, parsed, sequence) => {
                eprintln!(
                    "refused: json={json} read={read:?} parsed={:?} sequence={sequence:?}",
                    parsed.err()
                );
                400
            }
        };
        // The agent may have given up on this request.
        let _ = request.respond(tiny_http::Response::empty(status));
    }
    Ok(())
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Where the batches' sequence numbers go.
fn batches_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".batches");
    PathBuf::from(name)
}
