use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = vae::cli::Cli::parse();
    match vae::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("vae: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
