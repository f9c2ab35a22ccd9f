//! chat.v1.AdminService, the app backend's API: proto in, domain through, proto out.
//!
//! Every call needs an admin token: the auth interceptor refuses a missing
//! or bad one (UNAUTHENTICATED), and [`admin`] refuses a valid token
//! without `"admin": true` (PERMISSION_DENIED). What the calls do is
//! [`crate::access`]'s.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::access::Access;
use crate::domain::{
    Identity, NewSanction, RoomName, SanctionKind, SanctionsQuery, Visibility,
    parse_sanctioned_user, parse_scope, parse_user_ids,
};
use crate::error::Error;
use crate::proto::server::admin_service_server::AdminService;
use crate::proto::{self, RoomVisibility};

/// The AdminService implementation.
#[derive(Clone, Debug)]
pub struct AdminApi {
    pub(crate) access: Arc<Access>,
}

/// The caller, who must hold an admin token.
fn admin<T>(request: &Request<T>) -> Result<Identity, Status> {
    let identity = request
        .extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("authorization: missing bearer token"))?;
    if !identity.admin {
        return Err(Error::PermissionDenied(
            "AdminService needs an admin token (claims with \"admin\": true)".into(),
        )
        .into());
    }
    Ok(identity)
}

/// The wire value of a visibility.
pub(crate) fn wire_visibility(v: Visibility) -> i32 {
    match v {
        Visibility::Public => RoomVisibility::Public as i32,
        Visibility::Private => RoomVisibility::Private as i32,
    }
}

impl AdminApi {
    /// BanUser and MuteUser.
    async fn impose(
        &self,
        request: Request<proto::SanctionRequest>,
        kind: SanctionKind,
    ) -> Result<Response<proto::SanctionResponse>, Status> {
        admin(&request)?;
        let request = request.into_inner();
        let duration = request.duration.map(|d| (d.seconds, d.nanos));
        let new = NewSanction::parse(
            kind,
            &request.room,
            request.user_id,
            duration,
            request.reason,
        )?;
        let sanction = self.access.impose(&new).await?;
        Ok(Response::new(proto::SanctionResponse {
            sanction: Some(proto::Sanction::from(&sanction)),
        }))
    }

    /// UnbanUser and UnmuteUser.
    async fn lift(
        &self,
        request: Request<proto::LiftSanctionRequest>,
        kind: SanctionKind,
    ) -> Result<Response<proto::LiftSanctionResponse>, Status> {
        admin(&request)?;
        let request = request.into_inner();
        let scope = parse_scope(&request.room)?;
        let user = parse_sanctioned_user(request.user_id)?;
        self.access.lift(&scope, &user, kind).await?;
        Ok(Response::new(proto::LiftSanctionResponse {}))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_room(
        &self,
        request: Request<proto::CreateRoomRequest>,
    ) -> Result<Response<proto::CreateRoomResponse>, Status> {
        admin(&request)?;
        let request = request.into_inner();
        let room = RoomName::parse(&request.room)?;
        let visibility = Visibility::parse(request.visibility)?;
        let created = self.access.create_room(&room, visibility).await?;
        Ok(Response::new(proto::CreateRoomResponse {
            room: room.to_string(),
            visibility: wire_visibility(visibility),
            created,
        }))
    }

    async fn grant_access(
        &self,
        request: Request<proto::GrantAccessRequest>,
    ) -> Result<Response<proto::GrantAccessResponse>, Status> {
        admin(&request)?;
        let request = request.into_inner();
        let room = RoomName::parse(&request.room)?;
        let users = parse_user_ids(request.user_ids)?;
        self.access.grant(&room, &users).await?;
        Ok(Response::new(proto::GrantAccessResponse {}))
    }

    async fn revoke_access(
        &self,
        request: Request<proto::RevokeAccessRequest>,
    ) -> Result<Response<proto::RevokeAccessResponse>, Status> {
        admin(&request)?;
        let request = request.into_inner();
        let room = RoomName::parse(&request.room)?;
        let users = parse_user_ids(request.user_ids)?;
        self.access.revoke(&room, users).await?;
        Ok(Response::new(proto::RevokeAccessResponse {}))
    }

    async fn ban_user(
        &self,
        request: Request<proto::SanctionRequest>,
    ) -> Result<Response<proto::SanctionResponse>, Status> {
        self.impose(request, SanctionKind::Ban).await
    }

    async fn unban_user(
        &self,
        request: Request<proto::LiftSanctionRequest>,
    ) -> Result<Response<proto::LiftSanctionResponse>, Status> {
        self.lift(request, SanctionKind::Ban).await
    }

    async fn mute_user(
        &self,
        request: Request<proto::SanctionRequest>,
    ) -> Result<Response<proto::SanctionResponse>, Status> {
        self.impose(request, SanctionKind::Mute).await
    }

    async fn unmute_user(
        &self,
        request: Request<proto::LiftSanctionRequest>,
    ) -> Result<Response<proto::LiftSanctionResponse>, Status> {
        self.lift(request, SanctionKind::Mute).await
    }

    async fn list_sanctions(
        &self,
        request: Request<proto::ListSanctionsRequest>,
    ) -> Result<Response<proto::ListSanctionsResponse>, Status> {
        admin(&request)?;
        let request = request.into_inner();
        let query = SanctionsQuery::parse(
            &request.room,
            request.user_id,
            request.page_size,
            &request.page_token,
        )?;
        let (sanctions, next) = self.access.list_sanctions(&query).await?;
        Ok(Response::new(proto::ListSanctionsResponse {
            sanctions: sanctions.iter().map(proto::Sanction::from).collect(),
            next_page_token: next.map(|c| c.token()).unwrap_or_default(),
        }))
    }
}
