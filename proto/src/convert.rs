//! Conversions between wire messages and domain types.

use crate::pb;
use cudele_journal::{ChunkMap, ChunkRef, ChunkUpdate, ChunkVersion, FileKind, RenameMode, Timestamp, XattrMode};
use cudele_namespace::{Attr, InodeRecord, NsError};

pub fn kind_to_wire(kind: FileKind) -> pb::FileKind {
    match kind {
        FileKind::Regular => pb::FileKind::Regular,
        FileKind::Directory => pb::FileKind::Directory,
        FileKind::Symlink => pb::FileKind::Symlink,
        FileKind::Fifo => pb::FileKind::Fifo,
        FileKind::Socket => pb::FileKind::Socket,
        FileKind::CharDevice => pb::FileKind::CharDevice,
        FileKind::BlockDevice => pb::FileKind::BlockDevice,
    }
}

pub fn kind_from_wire(kind: i32) -> Result<FileKind, NsError> {
    match pb::FileKind::try_from(kind) {
        Ok(pb::FileKind::Regular) => Ok(FileKind::Regular),
        Ok(pb::FileKind::Directory) => Ok(FileKind::Directory),
        Ok(pb::FileKind::Symlink) => Ok(FileKind::Symlink),
        Ok(pb::FileKind::Fifo) => Ok(FileKind::Fifo),
        Ok(pb::FileKind::Socket) => Ok(FileKind::Socket),
        Ok(pb::FileKind::CharDevice) => Ok(FileKind::CharDevice),
        Ok(pb::FileKind::BlockDevice) => Ok(FileKind::BlockDevice),
        Ok(pb::FileKind::Unspecified) | Err(_) => Err(NsError::InvalidArgument("unknown file kind")),
    }
}

pub fn time_to_wire(time: Timestamp) -> pb::Timestamp {
    pb::Timestamp { seconds: time.seconds, nanoseconds: time.nanoseconds }
}

pub fn time_from_wire(time: Option<pb::Timestamp>) -> Timestamp {
    time.map(|time| Timestamp { seconds: time.seconds, nanoseconds: time.nanoseconds.min(999_999_999) })
        .unwrap_or_default()
}

/// The attributes, chunk size and published chunks of `record`.
pub fn attr_to_wire(record: &InodeRecord) -> pb::Attr {
    let attr = &record.attr;
    pb::Attr {
        ino: attr.ino,
        kind: kind_to_wire(attr.kind) as i32,
        perm: attr.perm,
        uid: attr.uid,
        gid: attr.gid,
        nlink: attr.nlink,
        size: attr.size,
        rdev: attr.rdev,
        atime: Some(time_to_wire(attr.atime)),
        mtime: Some(time_to_wire(attr.mtime)),
        ctime: Some(time_to_wire(attr.ctime)),
        chunk_size_bytes: record.chunk_size_bytes,
        chunks: record
            .chunks
            .iter()
            .map(|(index, chunk)| chunk_to_wire(&ChunkUpdate { index: *index, chunk: *chunk }))
            .collect(),
    }
}

pub fn chunk_to_wire(update: &ChunkUpdate) -> pb::Chunk {
    pb::Chunk {
        index: update.index,
        writer: update.chunk.version.writer,
        serial: update.chunk.version.serial,
        length_bytes: update.chunk.length_bytes,
    }
}

pub fn chunk_from_wire(chunk: &pb::Chunk) -> ChunkUpdate {
    ChunkUpdate {
        index: chunk.index,
        chunk: ChunkRef {
            version: ChunkVersion { writer: chunk.writer, serial: chunk.serial },
            length_bytes: chunk.length_bytes,
        },
    }
}

/// The attributes in a reply, the chunk size of the file's data and its published chunks.
pub fn attr_from_wire(attr: Option<pb::Attr>) -> Result<(Attr, u32, ChunkMap), NsError> {
    let attr = attr.ok_or(NsError::Io("reply without attributes".to_string()))?;
    let chunks = attr.chunks.iter().map(chunk_from_wire).map(|update| (update.index, update.chunk)).collect();
    Ok((
        Attr {
            ino: attr.ino,
            kind: kind_from_wire(attr.kind)?,
            perm: attr.perm,
            uid: attr.uid,
            gid: attr.gid,
            nlink: attr.nlink,
            size: attr.size,
            rdev: attr.rdev,
            atime: time_from_wire(attr.atime),
            mtime: time_from_wire(attr.mtime),
            ctime: time_from_wire(attr.ctime),
        },
        attr.chunk_size_bytes,
        chunks,
    ))
}

pub fn rename_mode_to_wire(mode: RenameMode) -> pb::RenameMode {
    match mode {
        RenameMode::Replace => pb::RenameMode::RenameReplace,
        RenameMode::NoReplace => pb::RenameMode::RenameNoreplace,
        RenameMode::Exchange => pb::RenameMode::RenameExchange,
    }
}

pub fn rename_mode_from_wire(mode: i32) -> Result<RenameMode, NsError> {
    match pb::RenameMode::try_from(mode) {
        Ok(pb::RenameMode::RenameReplace) => Ok(RenameMode::Replace),
        Ok(pb::RenameMode::RenameNoreplace) => Ok(RenameMode::NoReplace),
        Ok(pb::RenameMode::RenameExchange) => Ok(RenameMode::Exchange),
        Err(_) => Err(NsError::InvalidArgument("unknown rename flags")),
    }
}

pub fn xattr_mode_to_wire(mode: XattrMode) -> pb::XattrMode {
    match mode {
        XattrMode::Upsert => pb::XattrMode::XattrUpsert,
        XattrMode::Create => pb::XattrMode::XattrCreate,
        XattrMode::Replace => pb::XattrMode::XattrReplace,
    }
}

pub fn xattr_mode_from_wire(mode: i32) -> Result<XattrMode, NsError> {
    match pb::XattrMode::try_from(mode) {
        Ok(pb::XattrMode::XattrUpsert) => Ok(XattrMode::Upsert),
        Ok(pb::XattrMode::XattrCreate) => Ok(XattrMode::Create),
        Ok(pb::XattrMode::XattrReplace) => Ok(XattrMode::Replace),
        Err(_) => Err(NsError::InvalidArgument("unknown xattr flags")),
    }
}
