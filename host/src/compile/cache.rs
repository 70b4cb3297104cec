//! Compiled components on disk, so that a restart skips compilation.
//!
//! An entry's file name is a SHA-256 of the component's bytes and of the
//! engine's compatibility hash (wasmtime version, target, every setting that
//! shapes compiled code), so a stale entry is never even looked at: a changed
//! component, server or flag simply misses. Beside each entry (`NAME.cwasm`)
//! is its checksum (`NAME.xxh3`, a 128-bit XXH3), checked before wasmtime
//! maps the entry as code, so a corrupted or truncated entry is recompiled,
//! not run. The checksum guards against corruption, not forgery (see
//! below), so it need not be cryptographic, and XXH3 is several times
//! faster to check on every start than SHA-256. Both are written to
//! temporary files and renamed into place, the checksum first, so readers
//! never see half of either, nor an entry without its checksum.
//!
//! The entry is the compiled component exactly as wasmtime serialized it, so
//! wasmtime maps the file itself (`deserialize_file`) instead of copying it
//! into memory: only the code a guest runs becomes resident, and a warm
//! start skips a copy. That is why this is not wasmtime's own cache
//! (`Config::cache`): it reads each entry into memory and decompresses it,
//! so every serving process would hold a private copy of all of the code.
//!
//! Entries are native code that the server maps and runs: a directory that
//! another user owns, or that group or others may write to, could be given a
//! forged entry with a valid checksum. Such a directory is refused outright,
//! and so is one reached through a symbolic link. The directory is opened
//! once per load and checked on that open descriptor, and every file is
//! then opened through it (`/proc/self/fd/N/NAME`), never following a link
//! and, for new files, never reusing a name (`O_EXCL`): swapping the
//! directory or planting a link after the check reaches nothing.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::warn;
use wasmtime::component::Component;
use wasmtime::{Engine, Result};
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

/// Where a component's compiled code came from, for the startup log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Cache,
    Compiled,
}

/// Returns the component for `bytes`: from `dir` when a valid entry is there,
/// otherwise compiled and stored (a cache that cannot be written only costs
/// the next start a compilation).
pub fn load_or_compile(
    engine: &Engine,
    bytes: &[u8],
    dir: Option<&CacheDir>,
) -> Result<(Component, Origin)> {
    let Some(dir) = dir else {
        return Ok((Component::new(engine, bytes)?, Origin::Compiled));
    };
    let path = dir.join(&entry_name(engine, bytes));
    match check_entry(&path) {
        Ok(Some(entry)) => {
            // The very file whose checksum was checked, whatever is at its
            // name now.
            let checked = PathBuf::from(format!("/proc/self/fd/{}", entry.as_raw_fd()));
            // SAFETY: the entry is what `Component::serialize` wrote for an
            // engine with the same compatibility hash (it is part of the file
            // name), and its checksum proves it unchanged since. Entries are
            // only ever replaced by renaming a new file over them, never
            // written in place, so the mapped file cannot change under
            // wasmtime. The cache directory is created private to this user,
            // who could run code anyway.
            match unsafe { Component::deserialize_file(engine, &checked) } {
                Ok(component) => return Ok((component, Origin::Cache)),
                Err(err) => {
                    warn!(path = %path.display(), "unusable cache entry, recompiling: {err:#}")
                }
            }
        }
        Ok(None) => {}
        Err(reason) => warn!(path = %path.display(), "{reason}, recompiling"),
    }
    let component = Component::new(engine, bytes)?;
    match component.serialize() {
        Ok(code) => {
            if let Err(err) = write_entry(&path, &code) {
                warn!(dir = %dir.shown.display(), "cannot write the compile cache: {err}");
            }
        }
        Err(err) => warn!("cannot serialize the compiled component: {err:#}"),
    }
    Ok((component, Origin::Compiled))
}

/// The cache directory, open and checked.
pub struct CacheDir {
    fd: fs::File,
    /// Its path, for messages.
    shown: PathBuf,
}

impl CacheDir {
    /// Opens `dir` (created private if missing) without following a link,
    /// and fails unless it is owned by this process's user and writable by
    /// nobody else.
    pub fn open(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        if let Err(err) = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            wasmtime::bail!("cannot create the compile cache {}: {err}", dir.display());
        }
        let fd = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(dir)
        {
            Ok(fd) => fd,
            Err(_) if fs::symlink_metadata(dir).is_ok_and(|meta| meta.is_symlink()) => {
                wasmtime::bail!(
                    "refusing the compile cache {}: it is a symbolic link (its entries are run as \
                 code); give the directory itself, or use --no-cache",
                    dir.display()
                )
            }
            Err(err) => wasmtime::bail!("cannot use the compile cache {}: {err}", dir.display()),
        };
        let meta = fd.metadata()?;
        check_private(dir, meta.uid(), meta.mode())?;
        Ok(Self {
            fd,
            shown: dir.to_path_buf(),
        })
    }

    /// `name` inside the directory as opened, whatever its path holds now.
    fn join(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }
}

/// Fails unless a directory owned by `owner` with `mode` is this process's
/// user's and writable by nobody else.
fn check_private(dir: &Path, owner: u32, mode: u32) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let user = unsafe { libc::geteuid() };
    if owner != user {
        wasmtime::bail!(
            "refusing the compile cache {}: it is owned by user {}, not by this server's user {user} \
             (its entries are run as code); use a directory of your own or --no-cache",
            dir.display(),
            owner
        );
    }
    if mode & 0o022 != 0 {
        wasmtime::bail!(
            "refusing the compile cache {}: group or others may write to it (mode {:o}), and its \
             entries are run as code; `chmod go-w` it, or use --no-cache",
            dir.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

/// `<sha256(compatibility hash, sha256(component))>.cwasm`
fn entry_name(engine: &Engine, bytes: &[u8]) -> String {
    let mut key = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut key);
    key.0.update(Sha256::digest(bytes));
    format!("{:x}.cwasm", key.0.finalize())
}

/// The entry's checksum file, beside it.
fn checksum_path(entry: &Path) -> PathBuf {
    entry.with_extension("xxh3")
}

/// Opens `path` for reading without following a link.
fn open_no_follow(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// The entry at `path`, open, if it exists and its checksum holds; `Err`
/// says why an existing entry was refused.
fn check_entry(path: &Path) -> std::result::Result<Option<fs::File>, String> {
    let mut file = match open_no_follow(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot read the cache entry: {err}")),
    };
    let mut expected = Vec::new();
    match open_no_follow(&checksum_path(path)).and_then(|mut sum| sum.read_to_end(&mut expected)) {
        Ok(_) => {}
        // An entry without its checksum is compiled again.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot read the cache entry's checksum: {err}")),
    };
    // Read through a small buffer, not mapped: pages read here stay in the
    // page cache, but only those wasmtime's own mapping touches count
    // against this process.
    let mut hasher = Xxh3::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => hasher.update(&buffer[..read]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(format!("cannot read the cache entry: {err}")),
        }
    }
    if hasher.digest128().to_be_bytes().as_slice() != expected.as_slice() {
        return Err("corrupted cache entry (checksum mismatch)".into());
    }
    Ok(Some(file))
}

fn write_entry(path: &Path, code: &[u8]) -> std::io::Result<()> {
    // The checksum first: once the entry is in place, its checksum is too.
    write_atomically(&checksum_path(path), &xxh3_128(code).to_be_bytes())?;
    write_atomically(path, code)
}

/// Writes `bytes` to a new temporary file and renames it to `path`. The
/// temporary file must not exist yet (`O_EXCL`, and no link followed), so
/// nothing planted under its name is written through.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let temp = path.with_extension(format!("tmp{}-{nanos}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temp, path)
}

/// Feeds `Hash` output into SHA-256, for wasmtime's compatibility hash.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// `Hash` implementations only call `write`; the digest is read with
    /// `finalize` instead.
    fn finish(&self) -> u64 {
        0
    }
}
