//! `virtiofsd-kr`: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use virtiofsd_kr::cli::{Cli, Command};
use virtiofsd_kr::{daemon, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Mount(args)) => {
            logging::init(args.log_level);
            virtiofsd_kr::fusedev::mount(args).map_err(|e| e.to_string())
        }
        None if cli.serve.print_capabilities => {
            println!("{}", daemon::capabilities_json());
            Ok(())
        }
        None => {
            logging::init(cli.serve.log_level);
            daemon::serve(cli.serve).map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virtiofsd-kr: {e}");
            ExitCode::FAILURE
        }
    }
}
