//! chat.v1.ChatService: proto in, domain through, proto out.
//!
//! Each handler parses its request into domain types, calls the room
//! registry, the writer or storage, and converts the answer back. Errors
//! become `tonic::Status` here and nowhere else.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::admin::wire_visibility;
use crate::access::Access;
use crate::cluster::presence::Presence;
use crate::domain::{
    ChangeKind, ClientMessageId, Content, HISTORY_PAGE_BYTES, HistoryQuery, Identity, MarkersQuery,
    MembersQuery, MessageState, NewChange, NewMessage, ROOMS_PAGE_BYTES, Reaction, RoomName,
    RoomsQuery, Visibility, parse_seq,
};
use crate::error::Error;
use crate::limits::quota::HeldCharge;
use crate::limits::rate::UserRate;
use crate::proto::server::chat_service_server::ChatService;
use crate::proto::{self, EventSource, EventStream};
use crate::rooms::{MembersPage, Rooms};
use crate::storage::Store;
use crate::writer::Writer;

/// The ChatService implementation.
#[derive(Clone)]
pub struct ChatApi {
    pub(crate) rooms: Arc<Rooms>,
    pub(crate) writer: Writer,
    pub(crate) store: Store,
    /// The largest text message, in bytes.
    pub(crate) max_message_bytes: usize,
    /// Ends every open JoinRoom stream when the server shuts down.
    pub(crate) shutdown: CancellationToken,
    /// Cluster only: presence on the other nodes, for ListMembers of a
    /// room with no stream here.
    pub(crate) presence: Option<Arc<Presence>>,
    /// Who may use which room.
    pub(crate) access: Arc<Access>,
    /// Each user's send rate (`CHAT_USER_SEND_RATE`).
    pub(crate) send_rate: Arc<UserRate>,
    /// Each user's JoinRoom rate (`CHAT_USER_JOIN_RATE`).
    pub(crate) join_rate: Arc<UserRate>,
    /// Each user's rate of ListRooms, ListHistory, ListMembers and MarkRead
    /// calls (`CHAT_USER_READ_RATE`).
    pub(crate) read_rate: Arc<UserRate>,
}

/// The caller, as the auth interceptor found them.
fn identity<T>(request: &Request<T>) -> Result<Identity, Status> {
    request
        .extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("authorization: missing bearer token"))
}

#[tonic::async_trait]
impl ChatService for ChatApi {
    type JoinRoomStream = EventStream;

    async fn join_room(
        &self,
        request: Request<proto::JoinRoomRequest>,
    ) -> Result<Response<Self::JoinRoomStream>, Status> {
        let identity = identity(&request)?;
        let request = request.into_inner();
        let room = RoomName::parse(&request.room)?;
        let resume_after = request
            .resume_after_seq
            .map(|n| parse_seq("resume_after_seq", n))
            .transpose()?;
        self.join_rate.check(&identity.user_id)?;
        let epoch = self.access.epoch();
        let visibility = self.access.check_use(&identity, &room).await?;
        // A public room joined becomes the caller's (ListRooms), written
        // while the join reads the room.
        let theirs = async {
            match visibility {
                Visibility::Public => self.access.note_joined(&identity, &room).await,
                Visibility::Private => Ok(()),
            }
        };
        let join = self.rooms.join(
            room.clone(),
            identity.clone(),
            resume_after,
            self.store.clone(),
            self.shutdown.clone(),
        );
        let (subscription, theirs) = tokio::join!(join, theirs);
        let subscription = subscription?;
        theirs?;
        self.access.recheck(epoch, &identity, &room).await?;
        let events = futures_util::stream::unfold(subscription, |mut subscription| async move {
            let item = subscription.next().await?;
            Some((item, subscription))
        });
        // The HTTP layer frames the events (`http::HoldUntilSentLayer`); what
        // tonic is given is never read, unless that layer is missing.
        let unframed = futures_util::stream::iter([Err(Status::internal("internal error"))]);
        let mut response = Response::new(Box::pin(unframed) as EventStream);
        response
            .extensions_mut()
            .insert(EventSource::new(Box::pin(events)));
        Ok(response)
    }

    async fn send_message(
        &self,
        request: Request<proto::SendMessageRequest>,
    ) -> Result<Response<proto::SendMessageResponse>, Status> {
        let sender = identity(&request)?;
        let request = request.into_inner();
        let room = RoomName::parse(&request.room)?;
        self.access.check_speak(&sender, &room).await?;
        let message = NewMessage {
            room,
            sender,
            content: Content::parse(
                request.content_type,
                request.content,
                self.max_message_bytes,
            )?,
            client_message_id: ClientMessageId::parse(request.client_message_id)?,
            reply_to_seq: parse_seq("reply_to_seq", request.reply_to_seq)?,
        };
        self.send_rate.check(&message.sender.user_id)?;
        // Messages are never removed (a deletion leaves a tombstone): a
        // message found now is there when this one is stored.
        if message.reply_to_seq > 0
            && !self
                .store
                .has_message(&message.room, message.reply_to_seq)
                .await?
        {
            return Err(Error::NotFound {
                field: "reply_to_seq",
                reason: format!(
                    "room {} has no message {}",
                    message.room, message.reply_to_seq
                ),
            }
            .into());
        }
        self.access
            .settle_send(&message.sender, &message.room)
            .await?;
        let stored = self.writer.send(message).await?;
        Ok(Response::new(proto::SendMessageResponse {
            message: Some(proto::Message::from(&stored)),
        }))
    }

    async fn list_history(
        &self,
        request: Request<proto::ListHistoryRequest>,
    ) -> Result<Response<proto::ListHistoryResponse>, Status> {
        let caller = identity(&request)?;
        let request = request.into_inner();
        let query = HistoryQuery::parse(
            &request.room,
            request.page_size,
            request.before_seq,
            request.after_seq,
        )?;
        self.read_rate.check(&caller.user_id)?;
        self.access.check(&caller, &query.room).await?;
        // A page is at most HISTORY_PAGE_BYTES of what is stored (fewer
        // messages when they are large; `has_more` tells the client to go
        // on), charged to the caller's budget before the read (at the
        // current message limit's bound) and at its real size after, until
        // the client has taken the response.
        let bound = self.rooms.message_bound();
        let quotas = self.rooms.quotas();
        let upfront = (query.limit as usize)
            .saturating_mul(bound)
            .min(HISTORY_PAGE_BYTES);
        let mut charge = quotas.try_charge(&caller.user_id, upfront)?;
        let (page, mut reactions) = {
            let _turn = quotas.read_slot(&caller.user_id).await?;
            let page = self.store.history(&query).await?;
            let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
            let reactions = self
                .store
                .reactions(&query.room, &seqs, &caller.user_id)
                .await?;
            (page, reactions)
        };
        let response = proto::ListHistoryResponse {
            messages: page
                .messages
                .into_iter()
                .map(|message| {
                    proto::Message::from(&MessageState {
                        reactions: reactions.remove(&message.seq).unwrap_or_default(),
                        message,
                    })
                })
                .collect(),
            has_more: page.has_more,
            last_seq: page.last_seq,
        };
        let size = prost::Message::encoded_len(&response);
        charge.try_grow_to(size)?;
        charge.shrink_to(size);
        let mut response = Response::new(response);
        response.extensions_mut().insert(HeldCharge::new(charge));
        Ok(response)
    }

    async fn list_members(
        &self,
        request: Request<proto::ListMembersRequest>,
    ) -> Result<Response<proto::ListMembersResponse>, Status> {
        let caller = identity(&request)?;
        let request = request.into_inner();
        let room = RoomName::parse(&request.room)?;
        let query = MembersQuery::parse(request.page_size, &request.page_token)?;
        self.read_rate.check(&caller.user_id)?;
        self.access.check(&caller, &room).await?;
        let page = match (&self.presence, self.rooms.members_page(&room, &query)) {
            (_, Some(page)) => page,
            (Some(presence), None) => presence.ask_page(&room, &query).await,
            (None, None) => MembersPage {
                members: Vec::new(),
                next: None,
                count: 0,
            },
        };
        Ok(Response::new(proto::ListMembersResponse {
            members: page.members,
            next_page_token: page.next.map(|c| c.token()).unwrap_or_default(),
            member_count: u32::try_from(page.count).unwrap_or(u32::MAX),
        }))
    }

    async fn list_rooms(
        &self,
        request: Request<proto::ListRoomsRequest>,
    ) -> Result<Response<proto::ListRoomsResponse>, Status> {
        let caller = identity(&request)?;
        let request = request.into_inner();
        let mut query = RoomsQuery::parse(request.page_size, &request.page_token)?;
        self.read_rate.check(&caller.user_id)?;
        // Pages hold at most ROOMS_PAGE_BYTES of last messages: at the
        // current message limit, this many always fit (storage cuts a page
        // short when older, larger messages do not).
        let fit = (ROOMS_PAGE_BYTES / self.rooms.message_bound()).max(1);
        query.limit = query.limit.min(u32::try_from(fit).unwrap_or(u32::MAX));
        let (page, mut reactions) = {
            let _turn = self.rooms.quotas().read_slot(&caller.user_id).await?;
            let page = self.store.list_rooms(&caller.user_id, &query).await?;
            // The last messages' reactions, as the caller sees them.
            let last: Vec<(&RoomName, u64)> = page
                .rooms
                .iter()
                .filter_map(|r| r.last_message.as_ref().map(|m| (&r.room, m.seq)))
                .collect();
            let reactions = self.store.reactions_of_each(&last, &caller.user_id).await?;
            (page, reactions)
        };
        Ok(Response::new(proto::ListRoomsResponse {
            rooms: page
                .rooms
                .into_iter()
                .map(|r| proto::RoomSummary {
                    room: r.room.to_string(),
                    visibility: wire_visibility(r.visibility),
                    last_seq: r.last_seq,
                    last_message: r.last_message.map(|message| {
                        proto::Message::from(&MessageState {
                            reactions: reactions
                                .remove(&(r.room.to_string(), message.seq))
                                .unwrap_or_default(),
                            message,
                        })
                    }),
                    read_seq: r.read_seq,
                    unread_count: r.unread_count,
                })
                .collect(),
            next_page_token: page.next.map(|c| c.token()).unwrap_or_default(),
        }))
    }

    async fn mark_read(
        &self,
        request: Request<proto::MarkReadRequest>,
    ) -> Result<Response<proto::MarkReadResponse>, Status> {
        let caller = identity(&request)?;
        let request = request.into_inner();
        let room = RoomName::parse(&request.room)?;
        let seq = parse_seq("seq", request.seq)?;
        self.read_rate.check(&caller.user_id)?;
        self.access.check_use(&caller, &room).await?;
        let read_seq = self
            .store
            .mark_read(
                &caller.user_id,
                &caller.display_name,
                &room,
                seq,
                crate::domain::now_micros(),
            )
            .await?;
        // The room hears of it when it moved (coalesced per user and second).
        if read_seq == seq && seq > 0 {
            self.rooms.read_marker(&room, &caller, seq);
        }
        Ok(Response::new(proto::MarkReadResponse { read_seq }))
    }

    async fn edit_message(
        &self,
        request: Request<proto::EditMessageRequest>,
    ) -> Result<Response<proto::EditMessageResponse>, Status> {
        let actor = identity(&request)?;
        let request = request.into_inner();
        let kind = ChangeKind::Edit {
            content: request.content,
            max_text_bytes: self.max_message_bytes,
        };
        let message = self
            .change(actor, &request.room, request.message_seq, kind)
            .await?;
        Ok(Response::new(proto::EditMessageResponse {
            message: Some(message),
        }))
    }

    async fn delete_message(
        &self,
        request: Request<proto::DeleteMessageRequest>,
    ) -> Result<Response<proto::DeleteMessageResponse>, Status> {
        let actor = identity(&request)?;
        let request = request.into_inner();
        let message = self
            .change(
                actor,
                &request.room,
                request.message_seq,
                ChangeKind::Delete,
            )
            .await?;
        Ok(Response::new(proto::DeleteMessageResponse {
            message: Some(message),
        }))
    }

    async fn react(
        &self,
        request: Request<proto::ReactRequest>,
    ) -> Result<Response<proto::ReactResponse>, Status> {
        let actor = identity(&request)?;
        let request = request.into_inner();
        let kind = ChangeKind::React {
            reaction: Reaction::parse(request.reaction)?,
            add: request.add,
        };
        let message = self
            .change(actor, &request.room, request.message_seq, kind)
            .await?;
        Ok(Response::new(proto::ReactResponse {
            message: Some(message),
        }))
    }

    async fn set_typing(
        &self,
        request: Request<proto::SetTypingRequest>,
    ) -> Result<Response<proto::SetTypingResponse>, Status> {
        let caller = identity(&request)?;
        let request = request.into_inner();
        let room = RoomName::parse(&request.room)?;
        self.read_rate.check(&caller.user_id)?;
        self.access.check_speak(&caller, &room).await?;
        self.rooms.set_typing(&room, &caller, request.typing);
        Ok(Response::new(proto::SetTypingResponse {}))
    }

    async fn list_read_markers(
        &self,
        request: Request<proto::ListReadMarkersRequest>,
    ) -> Result<Response<proto::ListReadMarkersResponse>, Status> {
        let caller = identity(&request)?;
        let request = request.into_inner();
        let query = MarkersQuery::parse(&request.room, request.page_size, &request.page_token)?;
        self.read_rate.check(&caller.user_id)?;
        self.access.check(&caller, &query.room).await?;
        let (markers, next) = self.store.read_markers(&query).await?;
        Ok(Response::new(proto::ListReadMarkersResponse {
            markers: markers
                .into_iter()
                .map(|m| proto::ReadMarker {
                    member: Some(proto::Member {
                        user_id: m.user_id,
                        display_name: m.display_name,
                    }),
                    seq: m.seq,
                })
                .collect(),
            next_page_token: next.map(|c| c.token()).unwrap_or_default(),
        }))
    }
}

impl ChatApi {
    /// EditMessage, DeleteMessage and React: what SendMessage needs in the
    /// room (not muted, except to delete; and its rate), then the change through the room's writer, so
    /// that it is numbered and delivered in order with the room's sends.
    async fn change(
        &self,
        actor: Identity,
        room: &str,
        message_seq: u64,
        kind: ChangeKind,
    ) -> Result<proto::Message, Status> {
        let room = RoomName::parse(room)?;
        let message_seq = parse_seq("message_seq", message_seq)?;
        if message_seq == 0 {
            return Err(Error::invalid("message_seq", "is required").into());
        }
        // A muted user may still delete their own messages.
        if matches!(kind, ChangeKind::Delete) {
            self.access.check_use(&actor, &room).await?;
        } else {
            self.access.check_speak(&actor, &room).await?;
        }
        self.send_rate.check(&actor.user_id)?;
        self.access.settle_send(&actor, &room).await?;
        let changed = self
            .writer
            .change(NewChange {
                room,
                message_seq,
                actor,
                kind,
            })
            .await?;
        Ok(proto::Message::from(&changed.state))
    }
}
