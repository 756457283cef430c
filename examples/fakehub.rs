//! A local stand-in for the Hugging Face Hub, for trying owrun without network access.
//!
//!     cargo run --example fakehub -- [--port 8090] [--rate BYTES_PER_SEC] [--gated] \
//!         owner/name=DIR [owner/name=DIR ...]
//!
//! Then point owrun at it: `HF_ENDPOINT=http://127.0.0.1:8090 owrun pull hf:owner/name`.
//! `--rate` slows file bodies down so a pull can be interrupted and resumed by hand.
//! `--gated` makes every repo gated; the token `fakehub-token` has access.

#[path = "../tests/support/hub.rs"]
mod hub;

fn main() {
    let mut port = 8090u16;
    let mut faults = hub::Faults::default();
    let mut gated = false;
    let mut repos = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|v| v.parse().ok()).expect("--port N"),
            "--rate" => {
                faults.rate = Some(args.next().and_then(|v| v.parse().ok()).expect("--rate N"))
            }
            "--gated" => gated = true,
            spec => {
                let (id, dir) = spec.split_once('=').expect("owner/name=DIR");
                let mut repo = hub::RepoFixture::from_dir(id, std::path::Path::new(dir))
                    .unwrap_or_else(|e| panic!("cannot read {dir}: {e}"));
                repo.gated = gated;
                repos.push(repo);
            }
        }
    }
    if repos.is_empty() {
        eprintln!("usage: fakehub [--port N] [--rate BYTES_PER_SEC] [--gated] owner/name=DIR ...");
        std::process::exit(2);
    }
    let server = hub::FakeHub::start_on(port);
    server.add_token("fakehub-token");
    server.set_faults(faults);
    for r in repos {
        eprintln!("serving {} (commit {})", r.id, r.commit());
        server.add_repo(r);
    }
    println!("{}", server.url);
    eprintln!(
        "fake hub at {} (CDN {}); Ctrl-C to stop",
        server.url, server.cdn_url
    );
    loop {
        std::thread::park();
    }
}
