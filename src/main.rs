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
            result = cli::run(cli) => result,
            _ = tokio::signal::ctrl_c() => Err(sandbox::error::Error::Interrupted),
        }
    });
    let code = match result {
        Ok(()) => exit::OK,
        // `sandbox exec`: the command's own exit code, its output already said why
        Err(sandbox::error::Error::Exit(code)) => code,
        Err(e) => {
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
    };
    // do not wait for background tasks (spinners, open connections)
    runtime.shutdown_background();
    std::process::exit(code);
}
