//! `virtiofsd-kr`: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use virtiofsd_kr::accounting::{metrics, report, server};
use virtiofsd_kr::control::cli::{AccountingCommand, Cli, Command};
use virtiofsd_kr::control::{daemon, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Mount(args)) => {
            logging::init(args.log_level);
            args.mount_options(daemon::host_name())
                .map_err(|e| e.to_string())
                .and_then(|opts| {
                    virtiofsd_kr::control::fusedev::mount(opts).map_err(|e| e.to_string())
                })
        }
        Some(Command::Stats(args)) => {
            server::http_request(&args.metrics_addr, "GET", "/metrics", "")
                .map_err(|e| e.to_string())
                .and_then(|(status, body)| match status {
                    200 => {
                        print!("{}", metrics::summarize(&body));
                        Ok(())
                    }
                    s => Err(format!("{}: HTTP {s}: {}", args.metrics_addr, body.trim())),
                })
        }
        Some(Command::Limits(args)) => {
            let (method, body) = match args.set.is_empty() {
                true => ("GET", String::new()),
                false => ("PUT", args.set.join(" ")),
            };
            server::http_request(&args.metrics_addr, method, "/limits", &body)
                .map_err(|e| e.to_string())
                .and_then(|(status, body)| match status {
                    200 => {
                        print!("{body}");
                        Ok(())
                    }
                    s => Err(format!("{}: HTTP {s}: {}", args.metrics_addr, body.trim())),
                })
        }
        Some(Command::Accounting(AccountingCommand::Report(args))) => {
            logging::init(logging::LogLevel::Warn);
            args.options()
                .map_err(|e| e.to_string())
                .and_then(|opts| report::run(&opts).map_err(|e| e.to_string()))
                .map(|r| print!("{}", r.render(&args.tenant)))
        }
        Some(Command::Volume(v)) => {
            logging::init(logging::LogLevel::Warn);
            match v.command.action() {
                Some(action) => virtiofsd_kr::control::volume::run(&v.args.admin_options(), action)
                    .map_err(|e| e.to_string()),
                None => virtiofsd_kr::control::volume_serve::run(v).map_err(|e| e.to_string()),
            }
        }
        Some(Command::DockerPlugin(args)) => {
            logging::init(args.log_level);
            virtiofsd_kr::control::docker_plugin::run(args.plugin_options())
                .map_err(|e| e.to_string())
        }
        None if cli.serve.print_capabilities => {
            println!("{}", daemon::capabilities_json());
            Ok(())
        }
        None => match cli.serve.normalized() {
            Ok(serve) => {
                let sink = match serve.syslog {
                    true => logging::Sink::Syslog,
                    false => logging::Sink::Stderr,
                };
                logging::init_to(serve.log_level, sink);
                daemon::serve(serve).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        },
    };
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("virtiofsd-kr: {e}");
            1
        }
    };
    // Not a return from main: see `exit_now` (libcephfs' threads may still run).
    virtiofsd_kr::process::exit_now(code)
}
