//! Files in a sandbox's workspace, reached from the host without ever
//! following a link the sandbox planted.
//!
//! Every path is checked first (relative, no `..`, no empty or `.` parts),
//! then opened with `openat2` under `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV` relative to a descriptor of the workspace root: the
//! kernel refuses any symlink on the way and any step outside the root, so a
//! sandbox that swaps a folder for a link between two calls gains nothing.
//! Copies (stop, start, snapshot, fork) walk descriptor-relative with
//! `O_NOFOLLOW` for the same reason: links are copied as links, never followed.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2, readlinkat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, symlinkat, unlinkat};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strata_core::{Error, ErrorCode, Result};

/// An entry of a workspace folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileEntry {
    /// Its name.
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Size in bytes (files).
    pub size: u64,
}

/// A checked workspace path: relative, normal components only.
pub(crate) fn check_path(p: &str) -> Result<PathBuf> {
    let bad = |why: &str| Error::new(ErrorCode::InvalidPath, format!("'{p}': {why}"));
    if p.is_empty() || p.len() > 4096 || p.contains('\0') {
        return Err(bad("must be 1 to 4096 bytes without NUL"));
    }
    if p.starts_with('/') {
        return Err(bad("must be relative to /workspace, not absolute"));
    }
    let path = Path::new(p);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(bad("may not contain '..'")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("must be relative")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad("names no file"));
    }
    Ok(out)
}

fn how(flags: OFlag, mode: Mode) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(mode)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV,
        )
}

fn map_errno(p: &Path, e: Errno) -> Error {
    match e {
        Errno::ELOOP | Errno::EXDEV => Error::new(
            ErrorCode::InvalidPath,
            format!("'{}' goes through a symlink or leaves the workspace", p.display()),
        ),
        Errno::ENOENT => Error::not_found("file", &p.display().to_string()),
        Errno::ENOTDIR => Error::new(
            ErrorCode::InvalidPath,
            format!("a parent of '{}' is not a folder", p.display()),
        ),
        Errno::EISDIR => Error::new(ErrorCode::InvalidPath, format!("'{}' is a folder", p.display())),
        Errno::ENOSPC | Errno::EDQUOT => {
            Error::new(ErrorCode::WorkspaceFull, "the workspace quota is reached")
        }
        other => Error::internal(format!("{}: {other}", p.display())),
    }
}

fn open_root(root: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::internal(format!("workspace {}: {e}", root.display())))
}

/// Reads `rel` under `root`, refusing files over `max` bytes.
pub(crate) fn read(root: &Path, rel: &Path, max: u64) -> Result<Vec<u8>> {
    let dir = open_root(root)?;
    let fd = openat2(dir.as_fd(), rel, how(OFlag::O_RDONLY, Mode::empty())).map_err(|e| map_errno(rel, e))?;
    let st = fstat(fd.as_fd()).map_err(|e| map_errno(rel, e))?;
    if !is(&st, SFlag::S_IFREG) {
        return Err(Error::new(
            ErrorCode::InvalidPath,
            format!("'{}' is not a regular file", rel.display()),
        ));
    }
    if st.st_size as u64 > max {
        return Err(Error::new(
            ErrorCode::FileTooLarge,
            format!(
                "'{}' is {} bytes; at most {max} are returned",
                rel.display(),
                st.st_size
            ),
        ));
    }
    let mut data = Vec::with_capacity(st.st_size as usize);
    File::from(fd)
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::internal(format!("{}: {e}", rel.display())))?;
    Ok(data)
}

fn is(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

/// Writes `data` to `rel` under `root`, creating parent folders; new entries
/// are owned by `owner` (the sandbox user as the host sees it).
pub(crate) fn write(root: &Path, rel: &Path, data: &[u8], mode: u32, owner: (u32, u32)) -> Result<()> {
    let (uid, gid) = (Some(Uid::from_raw(owner.0)), Some(Gid::from_raw(owner.1)));
    let mut dir = open_root(root)?;
    let parts: Vec<_> = rel.components().collect();
    let Some((last, parents)) = parts.split_last() else {
        return Err(Error::new(ErrorCode::InvalidPath, "names no file"));
    };
    for part in parents {
        let name = part.as_os_str();
        let open_dir = |d: &OwnedFd| {
            openat2(
                d.as_fd(),
                name,
                how(OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()),
            )
        };
        let next = match open_dir(&dir) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(map_errno(rel, e)),
                }
                let fd = open_dir(&dir).map_err(|e| map_errno(rel, e))?;
                fchown(fd.as_fd(), uid, gid).map_err(|e| map_errno(rel, e))?;
                fd
            }
            Err(e) => return Err(map_errno(rel, e)),
        };
        dir = next;
    }
    // Written under a temporary name and renamed into place, so a write that
    // fails (the quota reached) leaves neither a partial file nor a truncated
    // old one. The rename replaces a link at `last` itself, never its target.
    if let Ok(st) = fstatat(
        dir.as_fd(),
        last.as_os_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFLNK => return Err(map_errno(rel, Errno::ELOOP)),
            SFlag::S_IFDIR => return Err(map_errno(rel, Errno::EISDIR)),
            _ => {}
        }
    }
    let tmp = format!(".strata-put-{}", strata_core::Id::new("tmp"));
    let fd = openat2(
        dir.as_fd(),
        tmp.as_str(),
        how(
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            Mode::from_bits_truncate(mode & 0o777),
        ),
    )
    .map_err(|e| map_errno(rel, e))?;
    let written = fchown(fd.as_fd(), uid, gid)
        .map_err(|e| map_errno(rel, e))
        .and_then(|()| {
            File::from(fd)
                .write_all(data)
                .map_err(|e| match e.raw_os_error() {
                    Some(n) => map_errno(rel, Errno::from_raw(n)),
                    None => Error::internal(e),
                })
        })
        .and_then(|()| {
            renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), last.as_os_str()).map_err(|e| map_errno(rel, e))
        });
    if written.is_err() {
        let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    written
}

/// Lists folder `rel` (or the root when `None`).
pub(crate) fn list(root: &Path, rel: Option<&Path>) -> Result<Vec<FileEntry>> {
    let dir = open_root(root)?;
    let fd = match rel {
        Some(r) => openat2(
            dir.as_fd(),
            r,
            how(OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()),
        )
        .map_err(|e| map_errno(r, e))?,
        None => dir,
    };
    let probe = fd.try_clone().map_err(Error::internal)?;
    let mut d = Dir::from_fd(fd).map_err(|e| Error::internal(format!("listing: {e}")))?;
    let mut out = Vec::new();
    for entry in d.iter().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let st = fstatat(
            probe.as_fd(),
            entry.file_name(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok();
        let (kind, size) = match st {
            Some(s) if is(&s, SFlag::S_IFREG) => ("file", s.st_size as u64),
            Some(s) if is(&s, SFlag::S_IFDIR) => ("dir", 0),
            Some(s) if is(&s, SFlag::S_IFLNK) => ("symlink", 0),
            _ => ("other", 0),
        };
        out.push(FileEntry {
            name,
            kind: kind.into(),
            size,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Copies the tree under `src` into the existing folder `dst`, never
/// following links; entries made are owned by `owner` when given.
pub(crate) fn copy_tree(src: &Path, dst: &Path, owner: Option<(u32, u32)>) -> std::io::Result<u64> {
    let s = nix::fcntl::open(
        src,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let d = nix::fcntl::open(
        dst,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    copy_dir(&s, &d, owner, 0)
}

fn copy_dir(src: &OwnedFd, dst: &OwnedFd, owner: Option<(u32, u32)>, depth: u32) -> std::io::Result<u64> {
    if depth > 256 {
        return Err(std::io::Error::other("workspace nested deeper than 256 folders"));
    }
    let ids = owner.map(|(u, g)| (Some(Uid::from_raw(u)), Some(Gid::from_raw(g))));
    let mut bytes = 0u64;
    let mut d = Dir::from_fd(src.try_clone()?)?;
    let names: Vec<(std::ffi::CString, Option<Type>)> = d
        .iter()
        .flatten()
        .map(|e| (e.file_name().to_owned(), e.file_type()))
        .filter(|(n, _)| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
    for (name, _) in names {
        let st = fstatat(src.as_fd(), name.as_c_str(), nofollow)?;
        let perm = Mode::from_bits_truncate(st.st_mode & 0o777);
        if is(&st, SFlag::S_IFDIR) {
            let from = nix::fcntl::openat(
                src.as_fd(),
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            match mkdirat(dst.as_fd(), name.as_c_str(), perm | Mode::S_IRWXU) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let to = nix::fcntl::openat(
                dst.as_fd(),
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            if let Some((u, g)) = ids {
                fchown(to.as_fd(), u, g)?;
            }
            bytes += copy_dir(&from, &to, owner, depth + 1)?;
        } else if is(&st, SFlag::S_IFREG) {
            let from = nix::fcntl::openat(
                src.as_fd(),
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            let to = nix::fcntl::openat(
                dst.as_fd(),
                name.as_c_str(),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                perm,
            )?;
            if let Some((u, g)) = ids {
                fchown(to.as_fd(), u, g)?;
            }
            bytes += std::io::copy(&mut File::from(from), &mut File::from(to))?;
        } else if is(&st, SFlag::S_IFLNK) {
            let target = readlinkat(src.as_fd(), name.as_c_str())?;
            match symlinkat(target.as_os_str(), dst.as_fd(), name.as_c_str()) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some((u, g)) = ids {
                fchownat(dst.as_fd(), name.as_c_str(), u, g, nofollow)?;
            }
        }
        // Sockets, fifos and devices are not copied.
    }
    Ok(bytes)
}

/// Bytes used by regular files under `root` (links not followed).
pub(crate) fn usage(root: &Path) -> u64 {
    fn walk(fd: &OwnedFd, depth: u32) -> u64 {
        if depth > 256 {
            return 0;
        }
        let Ok(dup) = fd.try_clone() else { return 0 };
        let Ok(mut d) = Dir::from_fd(dup) else { return 0 };
        let names: Vec<std::ffi::CString> = d
            .iter()
            .flatten()
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect();
        let mut total = 0;
        for n in names {
            let Ok(st) = fstatat(fd.as_fd(), n.as_c_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            if is(&st, SFlag::S_IFREG) {
                total += st.st_size as u64;
            } else if is(&st, SFlag::S_IFDIR)
                && let Ok(sub) = nix::fcntl::openat(
                    fd.as_fd(),
                    n.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
            {
                total += walk(&sub, depth + 1);
            }
        }
        total
    }
    match nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => walk(&fd, 0),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_parent_steps_or_absolute_roots_are_refused() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/..", ".", "a\0b"] {
            let e = check_path(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::InvalidPath, "{bad}");
        }
        assert_eq!(check_path("a/./b.txt").expect("fine"), PathBuf::from("a/b.txt"));
    }
}
