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
    // `dev` handles Ctrl-C itself (it may remove the sandbox first, with --down)
    let own_interrupt = matches!(cli.command, cli::Command::Dev(_));
    let result = runtime.block_on(async {
        if own_interrupt {
            return cli::run(cli).await;
        }
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
            // written, not printed: a closed stdout or stderr (a reader gone, as after a
            // Ctrl-C of a pipeline) must not panic here, which would wait on the blocking
            // tasks (a lock still awaited) and hang instead of exiting
            use std::io::Write;
            let code = e.exit_code();
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "error: {e}");
            for cause in e.chain() {
                let _ = writeln!(err, "  caused by: {cause}");
            }
            if let Some(hint) = e.hint() {
                let _ = writeln!(err, "hint: {hint}");
            }
            drop(err);
            if output == Output::Json {
                let _ = writeln!(
                    std::io::stdout().lock(),
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
