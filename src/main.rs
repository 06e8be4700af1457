//! The `sandbox` binary: parse, run, print the error chain and map the exit code.

use clap::Parser;
use sandbox::cli::{self, Cli, Output};
use sandbox::error::exit;

fn main() {
    let cli = Cli::parse();
    let output = cli.global.output;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let result = runtime.block_on(async {
        tokio::select! {
            result = cli::run(cli) => Some(result),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let code = match result {
        Some(Ok(())) => exit::OK,
        // `sandbox exec`: the command's own exit code, its output already said why
        Some(Err(sandbox::error::Error::Exit(code))) => code,
        Some(Err(e)) => {
            let code = e.exit_code();
            eprintln!("error: {e}");
            for cause in e.chain() {
                eprintln!("  caused by: {cause}");
            }
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&e.json()).expect("JSON values serialise")
                );
            }
            code
        }
        None => {
            eprintln!("interrupted");
            if output == Output::Json {
                // stdout holds one document whatever happens: the interruption is the error
                let interrupted = serde_json::json!({
                    "apiVersion": sandbox::config::API_VERSION,
                    "kind": "Error",
                    "exitCode": exit::INTERRUPTED,
                    "message": "interrupted",
                    "causes": [],
                    "hint": null,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&interrupted).expect("JSON values serialise")
                );
            }
            exit::INTERRUPTED
        }
    };
    // do not wait for background tasks (spinners, open connections)
    runtime.shutdown_background();
    std::process::exit(code);
}
