//! A scriptable stand-in for inst/worker.R, speaking the same frames.
//! A job's params are a command: ok:TEXT, print:TEXT, fail:MSG, sleep:MS,
//! exit:CODE, progress, spawn-hang (starts `sleep` in its group, reports its
//! pid as progress, then hangs), huge (a frame over any limit).

use asyncjobs::protocol::{encode, Decoder, Frame, Kind};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::time::Duration;

fn main() {
    let mut input = unsafe { File::from_raw_fd(3) };
    let mut output = unsafe { File::from_raw_fd(4) };
    let mut decoder = Decoder::new(usize::MAX);
    let mut next = move || -> Option<Frame> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = decoder.next_frame().unwrap() {
                return Some(f);
            }
            let n = input.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            decoder.push(&buf[..n]);
        }
    };
    let mut send = move |kind: Kind, text: &str, blob: &[u8]| {
        output.write_all(&encode(kind, text, &[blob])).unwrap();
    };
    let init = next().expect("init");
    if init.blob == b"fail-setup" {
        eprintln!("setup exploded");
        send(Kind::SetupFailed, "setup exploded", &[]);
        std::process::exit(1);
    }
    if init.blob == b"die-in-setup" {
        std::process::exit(3);
    }
    send(Kind::Ready, "", &[]);
    while let Some(frame) = next() {
        if frame.kind == Kind::Shutdown {
            break;
        }
        let (fn_len, _) = frame.text.split_once('\u{1f}').map(|(id, n)| (n.parse::<usize>().unwrap(), id)).unwrap();
        let cmd = String::from_utf8_lossy(&frame.blob[fn_len..]).to_string();
        let (verb, arg) = cmd.split_once(':').unwrap_or((cmd.as_str(), ""));
        match verb {
            "ok" => send(Kind::Result, "", arg.as_bytes()),
            "print" => {
                print!("{arg}");
                std::io::stdout().flush().unwrap();
                send(Kind::Result, "", b"printed");
            }
            "fail" => send(Kind::Failed, &format!("EXECUTION_ERROR\u{1f}{arg}"), &[]),
            "sleep" => {
                std::thread::sleep(Duration::from_millis(arg.parse().unwrap()));
                send(Kind::Result, "", b"slept");
            }
            "exit" => std::process::exit(arg.parse().unwrap()),
            "progress" => {
                send(Kind::Progress, "1\u{1f}2\u{1f}half way", &[]);
                send(Kind::Result, "", b"done");
            }
            "spawn-hang" => {
                let child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
                send(Kind::Progress, &format!("NA\u{1f}NA\u{1f}{}", child.id()), &[]);
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            "huge" => send(Kind::Result, "", &vec![0u8; 4 << 20]),
            _ => send(Kind::Failed, &format!("EXECUTION_ERROR\u{1f}unknown command {cmd}"), &[]),
        }
    }
}
