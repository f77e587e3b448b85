//! What the command-line tools share.

use std::process::ExitCode;

/// Parse the arguments of `prog`. `--help` and `--version` print and answer
/// `Err(SUCCESS)`; bad arguments print one line and answer `Err(2)`.
pub fn parse<T: clap::Parser>(prog: &str) -> Result<T, ExitCode> {
    match T::try_parse() {
        Ok(c) => Ok(c),
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            eprintln!("{prog}: {}", first.trim_start_matches("error: "));
            Err(ExitCode::from(2))
        }
    }
}
