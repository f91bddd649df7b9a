//! The `hookd` command line: `serve`, `check-config`, `migrate`, `key`, `secret-key`, `plugin`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hookd::config::{Config, DEFAULT_LISTEN, generate_api_key};
use hookd::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;

/// jemalloc instead of glibc malloc. Measured (issue 14, release binary, one webhook with the
/// `reshape-transform` plugin, 8 producers of 1 KiB events): with glibc the resident set grew
/// by ~20 KiB per delivery without bound (35 → 525 MiB over 24k deliveries) while heaptrack
/// showed at most ~92 MiB of live heap. The first large free (a plugin compile's multi-MiB
/// buffers) raises glibc's dynamic mmap threshold to that size, after which the engine's
/// transient 512 KiB buffers come from the arenas and fragment them. With jemalloc the same
/// run stays flat (~160 MiB after 32k deliveries); without plugins both allocators stay flat.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// hookd: durable, signed, retried webhook delivery with WebAssembly plugins.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: the HTTP API plus delivery.
    Serve {
        /// Config file.
        #[arg(long, env = "HOOKD_CONFIG", default_value = "config/hookd.toml")]
        config: PathBuf,
        /// Data directory (sled); overrides `data_dir` in the config file.
        #[arg(long, env = "HOOKD_DATA")]
        data: Option<PathBuf>,
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free one);
        /// overrides `listen` in the config file.
        #[arg(long, env = "HOOKD_LISTEN")]
        listen: Option<String>,
        /// Log output format.
        #[arg(long, env = "HOOKD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
        log_format: LogFormat,
    },
    /// Validate a config file (or a directory holding hookd.toml) without starting anything;
    /// exit status 1 lists every problem with its file and key.
    CheckConfig {
        /// Config file or directory.
        #[arg(default_value = "config/hookd.toml")]
        config: PathBuf,
    },
    /// Generate a new API key and the hash to paste into a tenant's `api_keys` (or the
    /// top-level `admin_api_keys`).
    Key,
    /// Generate a new secret key (seals webhook secrets at rest) for `[security] secret_key`,
    /// a `secret_key_file`, or `HOOKD_SECRET_KEY`.
    SecretKey,
    /// Apply the PostgreSQL schema migrations (`[store] backend = "postgres"`) and exit;
    /// `serve` applies them too, so this is for deployments that migrate as a separate step.
    Migrate {
        /// Config file (its `[store]` section; `HOOKD_POSTGRES_URL` wins over `postgres_url`).
        #[arg(long, env = "HOOKD_CONFIG", default_value = "config/hookd.toml")]
        config: PathBuf,
    },
    /// Work with plugin components.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// (Internal) Compile the component on stdin into the plugin compile cache at CACHE_DIR;
    /// `hookd serve` runs this for every upload, so a compile past its timeout can be killed.
    #[command(hide = true)]
    CompileWorker {
        #[arg(long)]
        cache_dir: PathBuf,
        /// The engine meters fuel (its compiled code differs).
        #[arg(long)]
        fuel: bool,
    },
    /// Check that FILE is a component hookd accepts (world, imports, exports, describe), the
    /// same checks an upload gets; prints its hooks, or every reason it is refused.
    Check {
        /// The component, e.g. target/wasm32-wasip2/release/my_plugin.wasm.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            data,
            listen,
            log_format,
        } => {
            telemetry::init(log_format);
            match serve(config, data, listen) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{}", describe(&err));
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(mut loaded) => {
                // The same key resolution as `serve`: the environment wins over the file.
                if let Err(problem) = loaded.security.resolve() {
                    eprintln!("{}: {problem}", config.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("{}: configuration is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Plugin(PluginCommand::Check { file }) => check_plugin(&file),
        Command::Plugin(PluginCommand::CompileWorker { cache_dir, fuel }) => {
            match hookd::plugin::compile_worker(&cache_dir, fuel) {
                Ok(()) => ExitCode::SUCCESS,
                Err(reason) => {
                    eprintln!("{reason}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Migrate { config } => {
            telemetry::init(LogFormat::Pretty);
            migrate(&config)
        }
        Command::SecretKey => {
            eprintln!(
                "Secret key (put it in [security] secret_key, a secret_key_file, or {}; keep a copy: without it stored webhook secrets cannot be opened):",
                hookd::config::SECRET_KEY_ENV
            );
            #[allow(clippy::print_stdout)]
            {
                println!("{}", hookd::secrets::generate_key());
            }
            ExitCode::SUCCESS
        }
        Command::Key => {
            let (key, hash) = generate_api_key();
            eprintln!("API key (give this to the tenant; it is not stored anywhere):");
            #[allow(clippy::print_stdout)]
            {
                println!("{key}");
            }
            eprintln!("\nAdd this line to the tenant's `api_keys` in config/hookd.toml:");
            #[allow(clippy::print_stdout)]
            {
                println!("\"{hash}\"");
            }
            ExitCode::SUCCESS
        }
    }
}

#[tokio::main]
async fn check_plugin(file: &std::path::Path) -> ExitCode {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(err) => {
            eprintln!("{}: cannot read: {err}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let scratch = match tempfile_dir() {
        Ok(dir) => dir,
        Err(err) => {
            eprintln!("cannot create a scratch directory: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = async {
        let host = hookd::plugin::PluginHost::open(&scratch, Default::default())
            .map_err(|err| err.to_string())?;
        host.install("check", "candidate", bytes)
            .await
            .map_err(|err| err.to_string())
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    match result {
        Ok(info) => {
            eprintln!(
                "{}: ok — `{}` version {}, hooks: {}, {} bytes",
                file.display(),
                info.declared_name,
                info.version,
                info.hooks.join(", "),
                info.size_bytes
            );
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("{}: refused — {reason}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// `hookd migrate`: the schema migrations alone.
#[tokio::main]
async fn migrate(config_path: &std::path::Path) -> ExitCode {
    let mut config = match Config::load(config_path) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    config.store.apply_env();
    if config.store.backend != hookd::config::StoreBackend::Postgres {
        eprintln!(
            "{}: [store] backend is sled, which has no schema to migrate",
            config_path.display()
        );
        return ExitCode::FAILURE;
    }
    match hookd::store::postgres::migrate(&config.store).await {
        Ok(applied) if applied.is_empty() => {
            eprintln!(
                "the schema is current (version {})",
                hookd::store::postgres::SCHEMA_VERSION
            );
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            eprintln!(
                "applied migration(s) {applied:?}; the schema is at version {}",
                hookd::store::postgres::SCHEMA_VERSION
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("migration failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A fresh directory under the system temp dir.
fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hookd-plugin-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs the engine on a runtime whose own shutdown is bounded too: blocking-pool work still
/// running after the engine stopped gets 5 s, then the process exits.
fn serve(
    config_path: PathBuf,
    data: Option<PathBuf>,
    listen: Option<String>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve_async(config_path, data, listen));
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

async fn serve_async(
    config_path: PathBuf,
    data: Option<PathBuf>,
    listen: Option<String>,
) -> anyhow::Result<()> {
    let mut config = Config::load(&config_path).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    config
        .security
        .apply_env()
        .map_err(|problem| anyhow::anyhow!(problem))?;
    config.store.apply_env();
    if let Some(data) = data {
        config.data_dir = data;
        config.start_overrides.push("data_dir");
    }
    // Uploads compile in a child process of this same binary, which can be killed.
    config.plugins.compile_worker = std::env::current_exe().ok();
    if let Some(listen) = listen {
        config.listen = listen
            .parse()
            .with_context(|| format!("`{listen}` is not an address like {DEFAULT_LISTEN}"))?;
        config.start_overrides.push("listen");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    // Signal handlers go in before the engine announces itself, so a SIGTERM sent right after
    // "listening on" is already a graceful stop.
    let signal = wait_for_signal()?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install a SIGHUP handler")?;
    let shutdown = CancellationToken::new();
    let engine = hookd::start(config, listener, shutdown.clone()).await?;
    // SIGHUP reloads the config file (an admin's explicit "apply it now"), as for most daemons.
    if let Some(reload) = engine.reload_requests() {
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                reload.request();
            }
        });
    }
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down: finishing attempts in flight");
        shutdown.cancel();
    });
    engine.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// An error and its causes on one line, each cause once: several of hookd's errors already
/// quote their cause in their own message, which `{:#}` would repeat.
fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Installs the SIGTERM/ctrl-c handlers now; the future resolves on the first signal.
fn wait_for_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install a SIGTERM handler")?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
