//! Debian's kernels: the matrix, resolved through a private apt configuration and extracted
//! into the cache (never into the host's /boot or /lib/modules).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{output, quiet};

const DEBIAN: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One kernel of the matrix: the newest `linux-image-<series>…-amd64` its suite offers.
pub struct Spec {
    pub name: &'static str,
    pub series: &'static str,
    pub suite: &'static str,
    pub archive: &'static str,
}

/// The matrix, oldest first (`oldest` and `newest` are its ends). One line per kernel.
#[rustfmt::skip] // a table, one kernel a line
pub const KERNELS: &[Spec] = &[
    Spec { name: "5.10",       series: "5.10", suite: "bullseye-security",  archive: SECURITY },
    Spec { name: "6.1",        series: "6.1",  suite: "bookworm-security",  archive: SECURITY },
    Spec { name: "6.12",       series: "6.12", suite: "bookworm-backports", archive: DEBIAN },
    Spec { name: "6.12-deb13", series: "6.12", suite: "trixie-security",    archive: SECURITY },
    Spec { name: "7.2",        series: "7.2",  suite: "sid",                archive: DEBIAN },
];

/// What `--kernel` takes: the table's names and the aliases.
pub fn names() -> impl Iterator<Item = &'static str> {
    KERNELS
        .iter()
        .map(|k| k.name)
        .chain(["oldest", "newest", "all"])
}

/// The table's entries that `--kernel` values (see [`names`]) name, in the order given,
/// each once.
pub fn select(names: &[String]) -> Vec<&'static Spec> {
    let mut chosen: Vec<&'static Spec> = Vec::new();
    for name in names {
        let specs: Vec<&'static Spec> = match name.as_str() {
            "all" => KERNELS.iter().collect(),
            "oldest" => KERNELS.first().into_iter().collect(),
            "newest" => KERNELS.last().into_iter().collect(),
            _ => KERNELS.iter().filter(|k| k.name == name).collect(),
        };
        for spec in specs {
            if !chosen.iter().any(|c| c.name == spec.name) {
                chosen.push(spec);
            }
        }
    }
    chosen
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// A kernel extracted into the cache.
#[derive(Serialize, Deserialize)]
pub struct Kernel {
    pub name: String,
    pub suite: String,
    /// `uname -r` in the guest.
    pub release: String,
    pub packages: Vec<Package>,
    /// This release's directory in the cache (extracted packages under `root/`).
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    /// The modules directory (with modules.dep) inside the extracted tree.
    pub modules: PathBuf,
}

impl Kernel {
    /// The module is in the extracted tree or built in.
    pub fn has_module(&self, name: &str) -> bool {
        Command::new("modprobe")
            .arg("-d")
            .arg(self.dir.join("root"))
            .args(["-S", &self.release, "--show-depends", name])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `linux-image-… 5.10.262-1` for each package.
    pub fn versions(&self) -> String {
        self.packages
            .iter()
            .map(|p| format!("{} {}", p.name, p.version))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The kernel of `spec`, from the cache when it is there (no network) unless `refresh`.
pub fn ensure(cache: &Path, spec: &Spec, refresh: bool) -> Result<Kernel> {
    let dir = cache.join("kernels").join(spec.name);
    let record = dir.join("kernel.json");
    if !refresh {
        if let Some(k) = read_record(&record) {
            eprintln!(
                "kernel {}: cached {} ({})",
                spec.name,
                k.release,
                k.versions()
            );
            return Ok(k);
        }
    }
    let apt = Apt::prepare(&cache.join("apt").join(spec.suite), spec)?;
    apt.update()?;
    let (release, packages) = apt.resolve(spec)?;
    let kernel_dir = dir.join(&release);
    if let Some(k) = read_record(&record) {
        if k.packages == packages && k.dir == kernel_dir {
            eprintln!(
                "kernel {}: {release} ({}) is current",
                spec.name,
                k.versions()
            );
            return Ok(k);
        }
    }
    let kernel = extract(&apt, spec, &kernel_dir, release, packages)?;
    fs::write(&record, serde_json::to_vec_pretty(&kernel)?)
        .with_context(|| format!("writing {}", record.display()))?;
    // Older releases of this entry are superseded: the cache keeps one per kernel.
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() && path != kernel_dir {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(kernel)
}

/// The record of an earlier extraction, if it is complete.
fn read_record(path: &Path) -> Option<Kernel> {
    let k: Kernel = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    (k.vmlinuz.is_file() && k.modules.join("modules.dep").is_file()).then_some(k)
}

/// Downloads the packages, unpacks them with `dpkg -x` and runs `depmod -b` on the tree.
fn extract(
    apt: &Apt,
    spec: &Spec,
    kernel_dir: &Path,
    release: String,
    packages: Vec<Package>,
) -> Result<Kernel> {
    let partial = kernel_dir.with_file_name(format!("{release}.partial"));
    for d in [&partial, kernel_dir] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    let debs = partial.join("debs");
    let root = partial.join("root");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    apt.download(&packages, &debs)?;
    for entry in fs::read_dir(&debs).with_context(|| format!("listing {}", debs.display()))? {
        let deb = entry?.path();
        eprintln!("kernel {}: unpacking {}", spec.name, deb.display());
        quiet(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    }
    fs::remove_dir_all(&debs).with_context(|| format!("removing {}", debs.display()))?;
    // depmod -b looks in <base>/lib/modules; packages from 6.12 on ship /usr/lib/modules.
    let lib = root.join("lib");
    if !lib.exists() {
        std::os::unix::fs::symlink("usr/lib", &lib)
            .with_context(|| format!("linking {}", lib.display()))?;
    }
    quiet(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
    fs::rename(&partial, kernel_dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), kernel_dir.display()))?;
    let root = kernel_dir.join("root");
    let modules = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|d| root.join(d).join(&release))
        .find(|d| d.join("modules.dep").is_file())
        .with_context(|| format!("no modules.dep for {release} under {}", root.display()))?;
    let vmlinuz = [
        root.join(format!("boot/vmlinuz-{release}")),
        modules.join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .with_context(|| format!("no vmlinuz for {release} under {}", root.display()))?;
    Ok(Kernel {
        name: spec.name.to_string(),
        suite: spec.suite.to_string(),
        release,
        packages,
        dir: kernel_dir.to_path_buf(),
        vmlinuz,
        modules,
    })
}

/// apt with its own sources, lists, cache and status: the host's stay untouched.
struct Apt {
    dir: PathBuf,
}

/// A package's fields from `apt-cache show`.
struct Stanza {
    package: String,
    version: String,
    depends: String,
}

impl Apt {
    fn prepare(dir: &Path, spec: &Spec) -> Result<Self> {
        if !Path::new(KEYRING).is_file() {
            bail!("{KEYRING} is missing: install debian-archive-keyring (cargo xtask setup)");
        }
        for d in [
            "sources",
            "preferences",
            "lists/partial",
            "cache/archives/partial",
        ] {
            let d = dir.join(d);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        // Only the Packages index: no translations or AppStream data the host's apt.conf.d
        // would otherwise add.
        let sources = format!(
            "Types: deb\nURIs: {}\nSuites: {}\nComponents: main\nArchitectures: amd64\n\
             Targets: Packages\nSigned-By: {KEYRING}\n",
            spec.archive, spec.suite
        );
        let file = dir.join("sources/debian.sources");
        fs::write(&file, sources).with_context(|| format!("writing {}", file.display()))?;
        let status = dir.join("status");
        fs::write(&status, "").with_context(|| format!("writing {}", status.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let d = |p: &str| self.dir.join(p).display().to_string();
        for (key, value) in [
            ("Dir::Etc::SourceList", "/dev/null".to_string()),
            ("Dir::Etc::SourceParts", d("sources")),
            ("Dir::Etc::Preferences", "/dev/null".to_string()),
            ("Dir::Etc::PreferencesParts", d("preferences")),
            ("Dir::State::Lists", d("lists")),
            ("Dir::State::status", d("status")),
            ("Dir::Cache", d("cache")),
            ("APT::Architecture", "amd64".to_string()),
            ("APT::Architectures", "amd64".to_string()),
            // Downloads land in a root-only cache directory.
            ("APT::Sandbox::User", "root".to_string()),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd
    }

    fn update(&self) -> Result<()> {
        let mut cmd = self.command("apt-get");
        cmd.args(["update", "-q"]);
        let out = cmd
            .output()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // apt reports a signature it cannot check as a warning and keeps the old lists.
        if !out.status.success() || stderr.contains("NO_PUBKEY") || stderr.contains("GPG error") {
            bail!(
                "apt-get update in {} failed ({}); if it names a missing key, install a newer \
                 debian-archive-keyring (bookworm-backports has one):\n{stderr}",
                self.dir.display(),
                out.status
            );
        }
        Ok(())
    }

    fn show(&self, names: &[String]) -> Result<Vec<Stanza>> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["show", "--no-all-versions"]).args(names);
        let text = output(&mut cmd)?;
        let mut stanzas = Vec::new();
        for block in text.split("\n\n") {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                    .unwrap_or_default()
                    .to_string()
            };
            let package = field("Package");
            if !package.is_empty() {
                stanzas.push(Stanza {
                    package,
                    version: field("Version"),
                    depends: field("Depends"),
                });
            }
        }
        Ok(stanzas)
    }

    /// The release and packages of the newest generic amd64 kernel of the spec's series.
    fn resolve(&self, spec: &Spec) -> Result<(String, Vec<Package>)> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["pkgnames", &format!("linux-image-{}", spec.series)]);
        let names: Vec<String> = output(&mut cmd)?
            .lines()
            .filter(|n| {
                let release = n.trim_start_matches("linux-image-");
                (release.starts_with(&format!("{}.", spec.series))
                    || release.starts_with(&format!("{}-", spec.series)))
                    && release.ends_with("-amd64")
                    && !release.ends_with("-cloud-amd64")
                    && !release.ends_with("-rt-amd64")
            })
            .map(str::to_string)
            .collect();
        let mut newest: Option<Stanza> = None;
        for stanza in self.show(&names)? {
            if newest
                .as_ref()
                .is_none_or(|n| version_greater(&stanza.version, &n.version))
            {
                newest = Some(stanza);
            }
        }
        let image = newest.with_context(|| {
            format!(
                "{} offers no linux-image-{}*-amd64 (its index in {} lists none)",
                spec.suite,
                spec.series,
                self.dir.display()
            )
        })?;
        let release = image.package.trim_start_matches("linux-image-").to_string();
        // sid's linux-image-* is a stub: the kernel, its modules and the modules' index
        // (modules.builtin, which modprobe needs) are packages of their own.
        let parts: Vec<String> = ["linux-binary", "linux-modules", "linux-base"]
            .iter()
            .map(|p| format!("{p}-{release}"))
            .filter(|p| {
                image
                    .depends
                    .split(',')
                    .any(|d| d.split_whitespace().next() == Some(p))
            })
            .collect();
        let mut packages = vec![Package {
            name: image.package.clone(),
            version: image.version.clone(),
        }];
        if !parts.is_empty() {
            packages.extend(self.show(&parts)?.into_iter().map(|s| Package {
                name: s.package,
                version: s.version,
            }));
        }
        eprintln!(
            "kernel {}: {} offers {release}: {}",
            spec.name,
            spec.suite,
            packages
                .iter()
                .map(|p| format!("{} {}", p.name, p.version))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok((release, packages))
    }

    fn download(&self, packages: &[Package], into: &Path) -> Result<()> {
        let mut cmd = self.command("apt-get");
        cmd.current_dir(into)
            .args(["download", "-q"])
            .args(packages.iter().map(|p| format!("{}={}", p.name, p.version)));
        crate::run(&mut cmd)
    }
}

/// Debian's version order (`dpkg --compare-versions`).
fn version_greater(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .is_ok_and(|s| s.success())
}
