//! The gRPC service: decode a request, run it through [`Mds`], encode the reply. No
//! filesystem semantics live here; errors map through `cudele_proto::status`.

use crate::metrics_names;
use crate::server::{created_ino, Mds, Unsafe};
use cudele_journal::{AttrChanges, ChunkUpdate, Event, SessionId, Timestamp, ROOT_INO};
use cudele_namespace::namespace::INODE_RANGE_LENGTH_MAX;
use cudele_namespace::{Namespace, NsError, NsResult};
use cudele_proto::auth::{Credential, Role, SESSION_HEADER};
use cudele_proto::convert::{
    attr_to_wire, chunk_from_wire, chunk_to_wire, kind_from_wire, kind_to_wire, rename_mode_from_wire, time_from_wire,
    xattr_mode_from_wire,
};
use cudele_proto::early;
use cudele_proto::pb::{self, mds_server};
use cudele_proto::status_from_error;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Most entries one readdir reply carries.
pub const READDIR_ENTRIES_MAX: usize = 4096;
/// Capacity statfs reports: the object store has no fixed size, so report a large one.
pub const STATFS_CAPACITY_BYTES: u64 = 1 << 50;
pub const STATFS_CAPACITY_INODES: u64 = 1 << 40;
pub const STATFS_BLOCK_SIZE_BYTES: u32 = 4096;

pub struct MdsService {
    pub mds: Arc<Mds>,
}

type Reply<T> = Result<Response<T>, Status>;

/// Largest ordinary request, in bytes (every call but Merge and Replay): the largest
/// legitimate one is a setxattr with a 64 KiB value or a set-layout of 4,096 chunks.
pub const REQUEST_BYTES_MAX: usize = 1 << 20;
/// Largest Merge or Replay request (the decode limit of the whole service): an inline
/// client journal larger than this is merged in chunks (`cudele_client`'s router).
pub const BULK_REQUEST_BYTES_MAX: usize = cudele_proto::MERGE_INLINE_BYTES_MAX + (1 << 20);
/// Most entries one Status page lists.
pub const STATUS_SESSIONS_MAX: usize = 1000;

/// Who is calling: the role its token admits (set by the authentication interceptor) and
/// its session, authenticated by the credential (0: the call named none).
#[derive(Debug, Clone, Copy)]
struct Caller {
    role: Role,
    session: SessionId,
}

fn caller<T>(mds: &Mds, request: &Request<T>) -> Result<Caller, Status> {
    // The interceptor admits every call it lets through with a role; none means a service
    // was wired without it, which must fail closed.
    let role = *request.extensions().get::<Role>().ok_or_else(|| Status::unauthenticated("no credentials checked"))?;
    let Some(value) = request.metadata().get(SESSION_HEADER) else { return Ok(Caller { role, session: 0 }) };
    let credential = value.to_str().ok().and_then(|text| Credential::parse(text).ok()).ok_or_else(|| {
        Status::unauthenticated("malformed cudele-session header: send the credential OpenSession returned")
    })?;
    if !mds.sessions.authenticate(&credential) {
        return Err(Status::unauthenticated(format!(
            "session {} is not live or the credential is wrong (open a new session)",
            credential.session
        )));
    }
    Ok(Caller { role, session: credential.session })
}

/// The caller's authenticated session; a call without one is refused. Ordinary calls are
/// also bounded in size.
fn session_of<T: prost::Message>(mds: &Mds, request: &Request<T>) -> Result<SessionId, Status> {
    let length = request.get_ref().encoded_len();
    if length > REQUEST_BYTES_MAX {
        return Err(Status::out_of_range(format!("request of {length} bytes; the limit is {REQUEST_BYTES_MAX}")));
    }
    bulk_session_of(mds, request).map(|caller| caller.session)
}

/// [`session_of`] for Merge and Replay, bounded by the service's decode limit only.
fn bulk_session_of<T>(mds: &Mds, request: &Request<T>) -> Result<Caller, Status> {
    let caller = caller(mds, request)?;
    if caller.session == 0 {
        return Err(Status::unauthenticated(
            "this call needs a session: send the cudele-session credential OpenSession returned",
        ));
    }
    Ok(caller)
}

/// The caller's role, for calls that need a token but no session (their session header,
/// if any, is not checked).
fn caller_role_only<T>(request: &Request<T>) -> Result<Role, Status> {
    request.extensions().get::<Role>().copied().ok_or_else(|| Status::unauthenticated("no credentials checked"))
}

/// Refuse a caller without the admin role.
fn require_admin(role: Role, what: &str) -> Result<(), Status> {
    if role < Role::Admin {
        return Err(status_from_error(NsError::Refused(format!("{what} needs the admin token"))));
    }
    Ok(())
}

fn attr_reply(namespace: &Namespace, ino: u64) -> NsResult<pb::AttrReply> {
    let record = namespace.record(ino)?;
    Ok(pb::AttrReply { attr: Some(attr_to_wire(record)) })
}

/// Count, time and map the result of one operation.
async fn instrumented<T>(
    mds: &Mds,
    operation: &'static str,
    work: impl std::future::Future<Output = NsResult<T>>,
) -> Reply<T> {
    instrumented_early(mds, operation, async { work.await.map(|reply| (reply, None)) }).await
}

/// [`instrumented`] for operations that may reply early: the reply carries the unsafe
/// record, and every reply (error or not) the incarnation and durable position.
async fn instrumented_early<T>(
    mds: &Mds,
    operation: &'static str,
    work: impl std::future::Future<Output = NsResult<(T, Option<Unsafe>)>>,
) -> Reply<T> {
    // After a restart, wait until the mounts replayed what it lost (see `crate::reconnect`).
    mds.reconnect.admit(operation).await;
    let started = Instant::now();
    mds.count_operation(operation);
    metrics::counter!(metrics_names::OPERATIONS_TOTAL, "op" => operation).increment(1);
    let result = work.await;
    metrics::histogram!(metrics_names::OPERATION_SECONDS, "op" => operation).record(started.elapsed().as_secs_f64());
    let durable_seq = mds.journal.durable_seq();
    match result {
        Ok((reply, unsafe_record)) => {
            let mut response = Response::new(reply);
            early::stamp(response.metadata_mut(), mds.incarnation, durable_seq);
            if let Some(unsafe_record) = unsafe_record {
                metrics::counter!(metrics_names::EARLY_REPLIES_TOTAL).increment(1);
                early::attach_unsafe_record(response.metadata_mut(), &unsafe_record.record);
            }
            Ok(response)
        }
        Err(error) => {
            metrics::counter!(metrics_names::OPERATION_ERRORS_TOTAL, "op" => operation).increment(1);
            let mut status = status_from_error(error);
            early::stamp(status.metadata_mut(), mds.incarnation, durable_seq);
            Err(status)
        }
    }
}

/// Whether the client keeps and replays unsafe records (it sent the early-reply header).
fn wants_early_reply<T>(request: &Request<T>) -> bool {
    request.metadata().get(early::EARLY_REPLY_HEADER).is_some_and(|value| value.as_bytes() == b"1")
}

impl MdsService {
    /// Create, mkdir, symlink and link: build the event (new entries get the next inode
    /// number) and reply with the attributes of the inode the new name points to.
    /// With `early` (the client replays unsafe records; never for link, whose replay could
    /// not tell whether it applied), the reply may precede durability.
    async fn create_entry(
        &self,
        origin: SessionId,
        operation: &'static str,
        early: bool,
        build: impl FnOnce(u64) -> NsResult<Event>,
    ) -> Reply<pb::AttrReply> {
        instrumented_early(&self.mds, operation, async {
            let (reply, unsafe_record) = self
                .mds
                .mutate_with(
                    origin,
                    early,
                    |_, ino| build(ino),
                    |namespace, event| attr_reply(namespace, created_ino(event)),
                )
                .await?;
            Ok((reply?, unsafe_record))
        })
        .await
    }
}

#[tonic::async_trait]
impl mds_server::Mds for MdsService {
    async fn open_session(&self, request: Request<pb::OpenSessionRequest>) -> Reply<pb::OpenSessionReply> {
        let role = caller(&self.mds, &request)?.role;
        if prost::Message::encoded_len(request.get_ref()) > REQUEST_BYTES_MAX {
            return Err(Status::out_of_range("OpenSession request too large"));
        }
        if role == Role::Replica {
            return Err(status_from_error(NsError::Refused("a replica token opens no sessions".into())));
        }
        let client = request.into_inner().client_name;
        instrumented(&self.mds, "open_session", async {
            let credential = self.mds.open_session(client).await?;
            Ok(pb::OpenSessionReply {
                session: credential.session,
                credential: credential.encode(),
                lease_ms: self.mds.sessions.lease.as_millis() as u64,
                object_store_url: self.mds.object_store_url.clone(),
            })
        })
        .await
    }

    async fn heartbeat(&self, request: Request<pb::Empty>) -> Reply<pb::Empty> {
        caller_role_only(&request)?;
        let credential = request
            .metadata()
            .get(SESSION_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| Credential::parse(text).ok())
            .ok_or_else(|| Status::unauthenticated("heartbeat without a session credential"))?;
        let session = credential.session;
        if self.mds.resume_session(&credential) {
            // Tells an idle client of a restart (new incarnation): it replays what was lost.
            let mut response = Response::new(pb::Empty {});
            early::stamp(response.metadata_mut(), self.mds.incarnation, self.mds.journal.durable_seq());
            Ok(response)
        } else {
            Err(Status::unauthenticated(format!("session {session} is not live (expired or unknown)")))
        }
    }

    async fn close_session(&self, request: Request<pb::Empty>) -> Reply<pb::Empty> {
        let session = session_of(&self.mds, &request)?;
        instrumented(&self.mds, "close_session", async {
            self.mds.close_session(session).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    type SubscribeStream = ReceiverStream<Result<pb::Invalidation, Status>>;

    async fn subscribe(&self, request: Request<pb::Empty>) -> Reply<Self::SubscribeStream> {
        let session = session_of(&self.mds, &request)?;
        let receiver =
            self.mds.sessions.subscribe(session).ok_or_else(|| Status::unauthenticated("session is not live"))?;
        // The incarnation tells a mount whose stream broke whether we restarted, so it can
        // replay and reconnect at once rather than at its next heartbeat.
        let mut response = Response::new(ReceiverStream::new(receiver));
        early::stamp(response.metadata_mut(), self.mds.incarnation, self.mds.journal.durable_seq());
        Ok(response)
    }

    async fn ack_invalidation(&self, request: Request<pb::AckInvalidationRequest>) -> Reply<pb::Empty> {
        let session = session_of(&self.mds, &request)?;
        self.mds.sessions.acknowledge(session, request.into_inner().id);
        Ok(Response::new(pb::Empty {}))
    }

    async fn lookup(&self, request: Request<pb::EntryRequest>) -> Reply<pb::AttrReply> {
        let origin = session_of(&self.mds, &request)?;
        let request = request.into_inner();
        instrumented(
            &self.mds,
            "lookup",
            self.mds.read(origin, request.parent, |namespace| {
                let attr = namespace.lookup(request.parent, &request.name)?;
                self.mds.note_interest(origin, [attr.ino]);
                attr_reply(namespace, attr.ino)
            }),
        )
        .await
    }

    async fn get_attr(&self, request: Request<pb::InoRequest>) -> Reply<pb::AttrReply> {
        let origin = session_of(&self.mds, &request)?;
        let ino = request.into_inner().ino;
        instrumented(&self.mds, "getattr", self.mds.read(origin, ino, |namespace| attr_reply(namespace, ino))).await
    }

    async fn set_attr(&self, request: Request<pb::SetAttrRequest>) -> Reply<pb::AttrReply> {
        let origin = session_of(&self.mds, &request)?;
        let request = request.into_inner();
        let ino = request.ino;
        instrumented(
            &self.mds,
            "setattr",
            self.mds.mutate(
                origin,
                |_| {
                    let time = Timestamp::now();
                    let changes = AttrChanges {
                        mode: request.mode,
                        uid: request.uid,
                        gid: request.gid,
                        size: request.size,
                        atime: if request.atime_now {
                            Some(time)
                        } else {
                            request.atime.map(|t| time_from_wire(Some(t)))
                        },
                        mtime: if request.mtime_now {
                            Some(time)
                        } else {
                            request.mtime.map(|t| time_from_wire(Some(t)))
                        },
                    };
                    Ok(Event::SetAttr { ino, changes, time })
                },
                |namespace, _| attr_reply(namespace, ino),
            ),
        )
        .await
        .and_then(flatten)
    }

    async fn create(&self, request: Request<pb::CreateRequest>) -> Reply<pb::AttrReply> {
        let origin = session_of(&self.mds, &request)?;
        let early = wants_early_reply(&request);
        let request = request.into_inner();
        self.create_entry(origin, "create", early, |ino| {
            Ok(Event::Create {
                parent: request.parent,
                name: request.name,
                ino,
                kind: kind_from_wire(request.kind)?,
                mode: request.mode & 0o7777,
                uid: request.uid,
                gid: request.gid,
                rdev: request.rdev,
                time: Timestamp::now(),
            })
        })
        .await
    }

    async fn mkdir(&self, request: Request<pb::MkdirRequest>) -> Reply<pb::AttrReply> {
        let origin = session_of(&self.mds, &request)?;
        let early = wants_early_reply(&request);
        let request = request.into_inner();
        self.create_entry(origin, "mkdir", early, |ino| {
            Ok(Event::Mkdir {
                parent: request.parent,
                name: request.name,
                ino,
                mode: request.mode & 0o7777,
                uid: request.uid,
                gid: request.gid,
                time: Timestamp::now(),
            })
        })
        .await
    }

    async fn symlink(&self, request: Request<pb::SymlinkRequest>) -> Reply<pb::AttrReply> {
        let origin = session_of(&self.mds, &request)?;
        let early = wants_early_reply(&request);
        let request = request.into_inner();
        self.create_entry(origin, "symlink", early, |ino| {
            Ok(Event::Symlink {
                parent: request.parent,
                name: request.name,
                ino,
                target: request.target,
                uid: request.uid,
                gid: request.gid,
                time: Timestamp::now(),
            })
        })
        .await
    }

    async fn link(&self, request: Request<pb::LinkRequest>) -> Reply<pb::AttrReply> {
        let origin = session_of(&self.mds, &request)?;
        let request = request.into_inner();
        self.create_entry(origin, "link", false, |_| {
            Ok(Event::Link {
                ino: request.ino,
                parent: request.new_parent,
                name: request.new_name,
                time: Timestamp::now(),
            })
        })
        .await
    }

    async fn unlink(&self, request: Request<pb::EntryRequest>) -> Reply<pb::Empty> {
        let origin = session_of(&self.mds, &request)?;
        let request = request.into_inner();
        instrumented(
            &self.mds,
            "unlink",
            self.mds.mutate(
                origin,
                |_| Ok(Event::Unlink { parent: request.parent, name: request.name, time: Timestamp::now() }),
                |_, _| pb::Empty {},
            ),
        )
        .await
    }

    async fn rmdir(&self, request: Request<pb::EntryRequest>) -> Reply<pb::Empty> {
        let origin = session_of(&self.mds, &request)?;
        let request = request.into_inner();
        instrumented(
            &self.mds,
            "rmdir",
            self.mds.mutate(
                origin,
                |_| Ok(Event::Rmdir { parent: request.parent, name: request.name, time: Timestamp::now() }),
                |_, _| pb::Empty {},
            ),
        )
        .await
    }

    async fn rename(&self, request: Request<pb::RenameRequest>) -> Reply<pb::Empty> {
        let origin = session_of(&self.mds, &request)?;
        let request = request.into_inner();
        instrumented(&self.mds, "rename", async {
            let mode = rename_mode_from_wire(request.mode)?;
            self.mds
                .mutate(
                    origin,
                    |_| {
                        Ok(Event::Rename {
                            source_parent: request.parent,
                            source_name: request.name,
                            target_parent: request.new_parent,
                            target_name: request.new_name,
                            mode,
                            time: Timestamp::now(),
                        })
                    },
                    |_, _| pb::Empty {},
                )
                .await
        })
        .await
    }

    async fn readlink(&self, request: Request<pb::InoRequest>) -> Reply<pb::ReadlinkReply> {
        let origin = session_of(&self.mds, &request)?;
        let ino = request.into_inner().ino;
        instrumented(
            &self.mds,
            "readlink",
            self.mds.read(origin, ino, |namespace| Ok(pb::ReadlinkReply { target: namespace.readlink(ino)?.to_vec() })),
        )
        .await
    }

    async fn readdir(&self, request: Request<pb::ReaddirRequest>) -> Reply<pb::ReaddirReply> {
        let origin = session_of(&self.mds, &request)?;
        let request = request.into_inner();
        let limit = (request.limit as usize).clamp(1, READDIR_ENTRIES_MAX);
        instrumented(
            &self.mds,
            "readdir",
            self.mds.read(origin, request.ino, |namespace| {
                let after = (!request.after.is_empty()).then_some(request.after.as_slice());
                let entries = namespace.readdir(request.ino, after, limit + 1)?;
                let end = entries.len() <= limit;
                self.mds.note_interest(origin, entries.iter().take(limit).map(|entry| entry.ino));
                let entries = entries
                    .into_iter()
                    .take(limit)
                    .map(|entry| {
                        let attr = if request.plus { namespace.record(entry.ino).ok().map(attr_to_wire) } else { None };
                        pb::DirEntry { name: entry.name, ino: entry.ino, kind: kind_to_wire(entry.kind) as i32, attr }
                    })
                    .collect();
                Ok(pb::ReaddirReply { entries, end })
            }),
        )
        .await
    }

    async fn get_xattr(&self, request: Request<pb::GetXattrRequest>) -> Reply<pb::XattrReply> {
        let origin = session_of(&self.mds, &request)?;
        let request = request.into_inner();
        instrumented(
            &self.mds,
            "getxattr",
            self.mds.read(origin, request.ino, |namespace| {
                Ok(pb::XattrReply { value: namespace.getxattr(request.ino, &request.name, request.size)?.to_vec() })
            }),
        )
        .await
    }

    async fn list_xattr(&self, request: Request<pb::ListXattrRequest>) -> Reply<pb::XattrReply> {
        let origin = session_of(&self.mds, &request)?;
        let request = request.into_inner();
        instrumented(
            &self.mds,
            "listxattr",
            self.mds.read(origin, request.ino, |namespace| {
                Ok(pb::XattrReply { value: namespace.listxattr(request.ino, request.size)? })
            }),
        )
        .await
    }

    async fn set_xattr(&self, request: Request<pb::SetXattrRequest>) -> Reply<pb::Empty> {
        let origin = session_of(&self.mds, &request)?;
        let request = request.into_inner();
        instrumented(&self.mds, "setxattr", async {
            let mode = xattr_mode_from_wire(request.mode)?;
            self.mds
                .mutate(
                    origin,
                    |_| {
                        Ok(Event::SetXattr {
                            ino: request.ino,
                            name: request.name,
                            value: request.value,
                            mode,
                            time: Timestamp::now(),
                        })
                    },
                    |_, _| pb::Empty {},
                )
                .await
        })
        .await
    }

    async fn remove_xattr(&self, request: Request<pb::RemoveXattrRequest>) -> Reply<pb::Empty> {
        let origin = session_of(&self.mds, &request)?;
        let request = request.into_inner();
        instrumented(
            &self.mds,
            "removexattr",
            self.mds.mutate(
                origin,
                |_| Ok(Event::RemoveXattr { ino: request.ino, name: request.name, time: Timestamp::now() }),
                |_, _| pb::Empty {},
            ),
        )
        .await
    }

    async fn statfs(&self, request: Request<pb::Empty>) -> Reply<pb::StatfsReply> {
        let origin = session_of(&self.mds, &request)?;
        instrumented(
            &self.mds,
            "statfs",
            self.mds.read(origin, ROOT_INO, |namespace| {
                let inodes = namespace.inode_count();
                let bytes = namespace.file_bytes();
                Ok(pb::StatfsReply {
                    inodes,
                    bytes,
                    inodes_free: STATFS_CAPACITY_INODES.saturating_sub(inodes),
                    bytes_free: STATFS_CAPACITY_BYTES.saturating_sub(bytes),
                    block_size: STATFS_BLOCK_SIZE_BYTES,
                    name_max: cudele_journal::NAME_LENGTH_MAX_BYTES as u32,
                })
            }),
        )
        .await
    }

    async fn set_layout(&self, request: Request<pb::SetLayoutRequest>) -> Reply<pb::SetLayoutReply> {
        let origin = session_of(&self.mds, &request)?;
        let request = request.into_inner();
        let ino = request.ino;
        let chunks: Vec<ChunkUpdate> = request.chunks.iter().map(chunk_from_wire).collect();
        // The chunks this layout replaces, read under the same lock the event applies in,
        // so the writer deletes exactly what stopped being published.
        let superseded = std::sync::Mutex::new(Vec::new());
        instrumented(
            &self.mds,
            "setlayout",
            self.mds.mutate(
                origin,
                |namespace| {
                    let published = &namespace.record(ino)?.chunks;
                    *superseded.lock().expect("superseded lock poisoned") = chunks
                        .iter()
                        .filter_map(|update| {
                            let old = published.get(&update.index)?;
                            (old.version != update.chunk.version)
                                .then_some(ChunkUpdate { index: update.index, chunk: *old })
                        })
                        .collect::<Vec<_>>();
                    Ok(Event::SetLayout {
                        ino,
                        size: request.size,
                        chunk_size_bytes: request.chunk_size_bytes,
                        mtime: request.mtime.map(|t| time_from_wire(Some(t))).unwrap_or_else(Timestamp::now),
                        chunks,
                    })
                },
                |namespace, _| {
                    let attr = Some(attr_to_wire(namespace.record(ino)?));
                    let superseded = std::mem::take(&mut *superseded.lock().expect("superseded lock poisoned"));
                    Ok(pb::SetLayoutReply { attr, superseded: superseded.iter().map(chunk_to_wire).collect() })
                },
            ),
        )
        .await
        .and_then(flatten)
    }

    async fn fsync(&self, request: Request<pb::InoRequest>) -> Reply<pb::Empty> {
        let origin = session_of(&self.mds, &request)?;
        let ino = request.into_inner().ino;
        instrumented(&self.mds, "fsync", async {
            // Changes acknowledged early (this session's creates) and anything else the
            // inode's state could depend on that is still in flight: wait for all of it.
            self.mds.read(origin, ino, |namespace| namespace.getattr(ino).map(|_| pb::Empty {})).await?;
            self.mds.wait_all_durable().await.map(|()| pb::Empty {})
        })
        .await
    }

    async fn replay(&self, request: Request<pb::ReplayRequest>) -> Reply<pb::ReplayReply> {
        let origin = bulk_session_of(&self.mds, &request)?.session;
        let encoded = request.into_inner().records;
        instrumented(&self.mds, "replay", async {
            let records = encoded
                .iter()
                .map(|bytes| cudele_journal::codec::decode_record(bytes))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| NsError::InvalidArgument("a replayed record does not decode"))?;
            let summary = self.mds.replay(origin, records).await?;
            Ok(pb::ReplayReply {
                applied: summary.applied,
                already_applied: summary.already_applied,
                failed: summary.failed,
                failures: summary.failures,
            })
        })
        .await
    }

    async fn allocate_inodes(&self, request: Request<pb::AllocateInodesRequest>) -> Reply<pb::InodeRangeReply> {
        let origin = session_of(&self.mds, &request)?;
        let count = request.into_inner().count;
        instrumented(&self.mds, "allocate_inodes", async {
            if count == 0 || count > INODE_RANGE_LENGTH_MAX {
                return Err(NsError::InvalidArgument("inode count out of range"));
            }
            self.mds
                .mutate(
                    origin,
                    |namespace| Ok(Event::AllocateInodes { owner: origin, range: namespace.peek_range(count) }),
                    |_, event| match event {
                        Event::AllocateInodes { range, .. } => {
                            pb::InodeRangeReply { start: range.start, end: range.end }
                        }
                        _ => pb::InodeRangeReply { start: 0, end: 0 },
                    },
                )
                .await
        })
        .await
    }

    async fn decouple(&self, request: Request<pb::DecoupleRequest>) -> Reply<pb::DecoupleReply> {
        let origin = session_of(&self.mds, &request)?;
        let request = request.into_inner();
        instrumented(&self.mds, "decouple", async {
            let (range, ops) = self.mds.decouple(origin, request.ino, request.policy).await?;
            let merged_seq = 0;
            Ok(pb::DecoupleReply {
                range_start: range.start,
                range_end: range.end,
                subtree: cudele_namespace::store_key::encode_frames(&ops),
                merged_seq,
            })
        })
        .await
    }

    async fn merge(&self, request: Request<pb::MergeRequest>) -> Reply<pb::MergeReply> {
        // An operator merge (admin) may come without a session; any other needs one.
        let caller = if request.get_ref().operator {
            caller(&self.mds, &request)?
        } else {
            bulk_session_of(&self.mds, &request)?
        };
        let origin = caller.session;
        let request = request.into_inner();
        if request.operator {
            require_admin(caller.role, "an operator merge (cudele journal apply)")?;
        }
        if request.journal.len() > cudele_proto::MERGE_INLINE_BYTES_MAX {
            return Err(Status::out_of_range(format!(
                "an inline client journal of {} bytes; the limit is {} (send it in chunks)",
                request.journal.len(),
                cudele_proto::MERGE_INLINE_BYTES_MAX
            )));
        }
        if !request.journal_object.is_empty() {
            check_journal_object(&request.journal_object, request.ino, origin, caller.role)?;
        }
        // Bounded work at once: each merge holds its decoded journal in memory.
        let _slot = self.mds.merge_slots.acquire().await.map_err(|_| Status::unavailable("shutting down"))?;
        instrumented(&self.mds, "merge", async {
            let started = Instant::now();
            let journal_bytes = request.journal.len();
            let records = if request.journal.is_empty() && request.journal_object.is_empty() {
                // Nothing to replay (e.g. recouple after everything merged).
                Vec::new()
            } else {
                client_journal_records(&self.mds, request.journal, &request.journal_object).await?
            };
            let decode_ms = started.elapsed().as_secs_f64() * 1e3;
            let summary = self.mds.merge(origin, request.ino, records, request.recouple, request.operator).await?;
            tracing::info!(
                session = origin,
                ino = request.ino,
                journal_bytes,
                applied = summary.applied,
                skipped = summary.skipped,
                decode_ms,
                total_ms = started.elapsed().as_secs_f64() * 1e3,
                "merged a client journal"
            );
            Ok(pb::MergeReply {
                events_applied: summary.applied,
                events_skipped: summary.skipped,
                events_already_merged: summary.already_merged,
                merged_seq: summary.merged_seq,
                skip_reasons: summary.skip_reasons,
            })
        })
        .await
    }

    async fn status(&self, request: Request<pb::StatusRequest>) -> Reply<pb::StatusReply> {
        caller_role_only(&request)?;
        let mds = &self.mds;
        let progress = &mds.progress;
        let page = request.into_inner();
        let limit = match page.sessions_limit as usize {
            0 => STATUS_SESSIONS_MAX,
            limit => limit.min(STATUS_SESSIONS_MAX),
        };
        let (sessions, sessions_total) = mds.sessions.view(page.sessions_after, limit);
        let sessions_end = sessions.len() < limit
            || sessions.last().is_none_or(|last| mds.sessions.view(last.session, 1).0.is_empty());
        Ok(Response::new(pb::StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: mds.started.elapsed().as_millis() as u64,
            sessions_total: sessions_total as u64,
            sessions_end,
            sessions: sessions
                .into_iter()
                .map(|view| pb::SessionStatus {
                    session: view.session,
                    client_name: view.client,
                    lease_remaining_ms: view.lease_remaining.as_millis() as u64,
                })
                .collect(),
            inodes: mds.inode_count(),
            journal_durable_seq: mds.journal.durable_seq(),
            journal_events: mds.journal.events_written(),
            journal_bytes: mds.journal.bytes_written(),
            segments_pending: progress.segments_pending.load(Ordering::Relaxed),
            store_applied_seq: progress.applied_seq.load(Ordering::Relaxed),
            snapshot_seq: progress.snapshot_seq.load(Ordering::Relaxed),
            operations: mds.operation_counts().into_iter().map(|(name, count)| (name.to_string(), count)).collect(),
            object_store_url: mds.object_store_url.clone(),
            replicas: Some(crate::replica::status::replica_status(&mds.replicas)),
            reconnect_pending: mds.reconnect.pending() as u64,
            replayed_records: mds.reconnect.replayed_records(),
        }))
    }

    async fn dump(&self, request: Request<pb::Empty>) -> Reply<pb::DumpReply> {
        // The whole namespace, blocked subtrees included: an operator's view.
        require_admin(caller(&self.mds, &request)?.role, "Dump")?;
        instrumented(
            &self.mds,
            "dump",
            self.mds.read(0, ROOT_INO, |namespace| {
                Ok(pb::DumpReply {
                    dump: namespace.dump(),
                    invariant_violation: namespace.check_invariants().err().unwrap_or_default(),
                })
            }),
        )
        .await
    }
}

/// A client journal named in a Merge: the caller's own one of this subtree, or (admin) any
/// under the client-journal prefix — never the MDS's journal or snapshots.
fn check_journal_object(name: &str, ino: u64, origin: SessionId, role: Role) -> Result<(), Status> {
    let own = cudele_journal::store::client_journal_object(ino, origin);
    let allowed = if role == Role::Admin {
        name.starts_with(cudele_journal::store::CLIENT_JOURNAL_PREFIX)
            && !name.split('/').any(|part| part == ".." || part == "." || part.is_empty())
    } else {
        name == own
    };
    if allowed {
        Ok(())
    } else {
        Err(status_from_error(NsError::Refused(format!(
            "journal object {name:?}: a client may merge only its own client journal ({own})"
        ))))
    }
}

/// Replies built under the lock may themselves fail (the inode vanished): surface that.
fn flatten<T>(response: Response<NsResult<T>>) -> Reply<T> {
    response.into_inner().map(Response::new).map_err(status_from_error)
}

/// The records of a client journal sent inline or named as an object; the whole segment is
/// checked before any of it is used.
async fn client_journal_records(mds: &Mds, inline: Vec<u8>, object: &str) -> NsResult<Vec<cudele_journal::Record>> {
    let (name, bytes) = if object.is_empty() {
        ("inline client journal".to_string(), bytes::Bytes::from(inline))
    } else {
        let bytes = mds.objects.get(object).await.map_err(|error| NsError::Io(format!("reading {object}: {error}")))?;
        (object.to_string(), bytes)
    };
    let contents = cudele_journal::segment::read_segment(&bytes).map_err(|error| {
        tracing::info!(%error, journal = %name, "merge refused: bad client journal");
        NsError::InvalidArgument("the client journal is corrupt or not a cudele journal")
    })?;
    if contents.torn_tail {
        return Err(NsError::InvalidArgument("the client journal is truncated"));
    }
    Ok(contents.records)
}
