//! `osbuild`: the command line, which lives in [`osbuild::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match osbuild::cli::Cli::from_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => return osbuild::cli::usage_error(&e),
    };
    osbuild::cli::run(cli).unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
