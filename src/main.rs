use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // SAFETY: mallopt only tunes glibc's allocator, before any thread starts.
    // Keep large freed blocks in the heap for reuse instead of returning each
    // to the kernel: every layer allocates activations of hundreds of MB.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    let cli = vae::cli::Cli::parse();
    match vae::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("vae: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
