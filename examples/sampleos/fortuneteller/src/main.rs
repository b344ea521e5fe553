//! SampleOS's service, as in the cOS toolkit's SampleOS: `GET /fortuneteller` answers with
//! a fortune. Standard library only, so that the binary needs nothing beyond libc in the
//! image.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const FORTUNES: &[&str] = &[
    "An upgrade is only as good as the rollback behind it.",
    "You will boot the same bits twice.",
    "A read-only /usr brings peace of mind.",
    "The deployment you seek is already staged.",
    "Your /etc will be merged, not lost.",
    "Good news will arrive as a static delta.",
    "Today's commit is tomorrow's rollback target.",
];

/// The listen address: `FORTUNETELLER_ADDR`, else every interface on port 8090.
fn address() -> String {
    std::env::var("FORTUNETELLER_ADDR").unwrap_or_else(|_| "0.0.0.0:8090".to_string())
}

fn main() -> ExitCode {
    let addr = address();
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fortuneteller: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("fortuneteller: listening on {addr}");
    serve(&listener);
    ExitCode::SUCCESS
}

/// Answer connections one at a time: the service is a demo, not a web server.
fn serve(listener: &TcpListener) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = answer(stream) {
                    eprintln!("fortuneteller: {e}");
                }
            }
            Err(e) => eprintln!("fortuneteller: accepting a connection: {e}"),
        }
    }
}

fn answer(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read the headers up to the empty line, so the client sees a clean close.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let (status, body) = route(&request_line);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// The status line and body for a request line such as `GET /fortuneteller HTTP/1.1`.
fn route(request_line: &str) -> (&'static str, String) {
    let mut words = request_line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("GET"), Some("/fortuneteller")) => ("200 OK", format!("{}\n", fortune())),
        (Some("GET"), Some(_)) => ("404 Not Found", "try GET /fortuneteller\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET is served\n".to_string()),
    }
}

fn fortune() -> &'static str {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    FORTUNES[nanos as usize % FORTUNES.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connecting");
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("sending");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("reading");
        out
    }

    #[test]
    fn answers_with_a_fortune_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
        let addr = listener.local_addr().expect("address");
        std::thread::spawn(move || serve(&listener));
        let reply = get(addr, "/fortuneteller");
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        let body = reply.split("\r\n\r\n").nth(1).expect("a body");
        assert!(FORTUNES.contains(&body.trim_end()), "{body}");
        let reply = get(addr, "/");
        assert!(reply.starts_with("HTTP/1.1 404 "), "{reply}");
    }

    #[test]
    fn only_get_is_served() {
        assert_eq!(
            route("POST /fortuneteller HTTP/1.1").0,
            "405 Method Not Allowed"
        );
        assert_eq!(route("").0, "405 Method Not Allowed");
    }
}
