//! A scriptable stand-in for inst/worker.R, speaking the same frames.
//! A job's params are a command: ok:TEXT, print:TEXT, fail:MSG, sleep:MS,
//! exit:CODE, progress, spawn-hang (starts `sleep` in its group, reports its
//! pid as progress, then hangs), escape-hang and escape-exit (the same with a
//! `setsid` sleep its shell orphaned; then hangs, or exits 3), huge (a frame
//! over any limit), forge (a result with the wrong tag, then the right one),
//! garbage (bytes that are not a frame).

use asyncjobs::protocol::{encode, Decoder, Frame, Kind};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::time::Duration;

fn main() {
    let mut input = unsafe { File::from_raw_fd(3) };
    let mut output = unsafe { File::from_raw_fd(4) };
    let mut decoder = Decoder::new(usize::MAX);
    let mut ready = VecDeque::new();
    let mut next = move || -> Option<Frame> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = ready.pop_front() {
                return Some(f);
            }
            let n = input.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            ready.extend(decoder.push(&buf[..n]).unwrap());
        }
    };
    // The job being run: its id and tag go on every frame about it.
    let mut job = (uuid::Uuid::nil(), 0u64);
    let mut raw = output.try_clone().unwrap();
    let mut send = move |job: (uuid::Uuid, u64), kind: Kind, text: &str, blob: &[u8]| {
        output.write_all(&encode(kind, job.0, job.1, text, &[blob])).unwrap();
    };
    let init = next().expect("init");
    if init.blob == b"fail-setup" {
        eprintln!("setup exploded");
        send(job, Kind::SetupFailed, "setup exploded", &[]);
        std::process::exit(1);
    }
    if init.blob == b"die-in-setup" {
        std::process::exit(3);
    }
    send(job, Kind::Ready, "", &[]);
    while let Some(frame) = next() {
        if frame.kind == Kind::Shutdown {
            break;
        }
        // The job's text: id, the executor's length, then more fields.
        let fn_len: usize = frame.text.split('\u{1f}').nth(1).unwrap().parse().unwrap();
        job = (frame.job, frame.tag);
        let cmd = String::from_utf8_lossy(&frame.blob[fn_len..]).to_string();
        let (verb, arg) = cmd.split_once(':').unwrap_or((cmd.as_str(), ""));
        match verb {
            "ok" => send(job, Kind::Result, "", arg.as_bytes()),
            "print" => {
                print!("{arg}");
                std::io::stdout().flush().unwrap();
                send(job, Kind::Result, "", b"printed");
            }
            "fail" => send(job, Kind::Failed, &format!("EXECUTION_ERROR\u{1f}{arg}"), &[]),
            "sleep" => {
                std::thread::sleep(Duration::from_millis(arg.parse().unwrap()));
                send(job, Kind::Result, "", b"slept");
            }
            "exit" => std::process::exit(arg.parse().unwrap()),
            "progress" => {
                send(job, Kind::Progress, "1\u{1f}2\u{1f}half way", &[]);
                send(job, Kind::Result, "", b"done");
            }
            "spawn-hang" => {
                let child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
                send(job, Kind::Progress, &format!("NA\u{1f}NA\u{1f}{}", child.id()), &[]);
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            // A sleep that leaves the group and its parent (setsid, orphaned);
            // its pid as progress; then hang (escape-hang) or die (escape-exit).
            "escape-hang" | "escape-exit" => {
                let out = std::process::Command::new("sh")
                    .args(["-c", "setsid sleep 1001 </dev/null >/dev/null 2>&1 & echo $!"])
                    .output()
                    .unwrap();
                let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
                send(job, Kind::Progress, &format!("NA\u{1f}NA\u{1f}{pid}"), &[]);
                if verb == "escape-exit" {
                    std::thread::sleep(Duration::from_millis(200));
                    std::process::exit(3);
                }
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            "forge" => {
                send((job.0, job.1 ^ 1), Kind::Result, "", b"forged");
                send(job, Kind::Result, "", b"real");
            }
            "garbage" => {
                raw.write_all(b"hello from a stray process\n").unwrap();
                send(job, Kind::Result, "", b"after garbage");
            }
            "huge" => send(job, Kind::Result, "", &vec![0u8; 4 << 20]),
            _ => send(job, Kind::Failed, &format!("EXECUTION_ERROR\u{1f}unknown command {cmd}"), &[]),
        }
        // Like the R worker: ready for the next job once its state is reset.
        job = (uuid::Uuid::nil(), 0);
        send(job, Kind::Ready, "", &[]);
    }
}
