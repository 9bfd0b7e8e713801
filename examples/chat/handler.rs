//! The chat's WebSocket handler and its rooms: shared by the hyper server
//! (`examples/chat/main.rs`) and the axum one (`examples/axum_chat.rs`).
//!
//! Every text message goes to the sender's room as `NAME: message`. Commands:
//! `/join ROOM` moves to another room (the sender alone then gets `You are in room ROOM`),
//! and `/msg NAME text` goes to every tab of user NAME, and the sender's, as
//! `ALICE → NAME: text`. Joins and leaves are announced in the room as
//! `NAME joined (N online)` and `NAME left (N online)`.
//!
//! Clients that ask for positions (`&positions=1`, as the page does) get each room message
//! as `@POSITION PREVIOUS text`, and after losing their connection come back with
//! `&resume=POSITION`: they get what the room said meanwhile, once, then
//! `Recovered N missed messages`, or `Could not recover ...` when the room's history no
//! longer reaches back that far. Other clients (the classic protocol) see plain lines.

use std::sync::Arc;

use websocket_handler::backplane::Backplane;
use websocket_handler::{
    query_param, CloseFrame, Connection, History, Lost, LostKind, Message, Position, ResumeError,
    Rooms, Tag, WebSocketHandler,
};

/// The room everyone starts in unless the URL says otherwise.
pub const DEFAULT_ROOM: &str = "lobby";

/// Longest accepted username and room name, in characters (not bytes).
const MAX_NAME_CHARS: usize = 32;

/// A user's or a room's name. Shared, not copied: the handler, the room's key and the
/// user's key are one allocation, which matters at 100,000 mostly idle connections.
pub type Name = Arc<str>;

/// Everything the chat's connections share: the rooms, and each user's connections (tabs).
/// One pointer, cloned into every connection's handler: what a handler holds, every idle
/// connection's task holds (the chat's is 48 bytes, which keeps the task at 256).
#[derive(Clone)]
pub struct ChatRooms(Arc<Shared>);

/// What [`ChatRooms`] points to.
pub struct Shared {
    pub rooms: Rooms<Name>,
    pub users: Rooms<Name>,
    /// [`DEFAULT_ROOM`], made once for every connection that starts there.
    lobby: Name,
    /// Whether to announce joins and leaves (`--no-notices` turns them off, for benchmarks
    /// against servers that have none).
    pub announce: bool,
    /// Whether rooms span processes through a backplane: counts are then per process.
    spans_processes: bool,
}

/// How much of each room is kept for clients that come back; and every client, classic
/// ones too, is told on a line of its own when the backplane lost the room's history.
fn history() -> History {
    History::new()
        .max_messages(1000)
        .max_age(std::time::Duration::from_secs(3600))
        .tag(tag)
        .lost_notice(lost_notice)
}

/// What every client gets, after the last message before the gap, when messages were lost.
fn lost_notice(lost: &Lost) -> Option<Message> {
    match lost.kind {
        LostKind::HistoryReset => Some(Message::from("some messages were lost: history was reset")),
        _ => None,
    }
}

/// What a client that asked for positions gets: `@POSITION PREVIOUS text` (`-` for no
/// previous message in this room).
fn tag(tag: &Tag, message: &Message) -> Message {
    let previous = tag
        .previous
        .map_or_else(|| "-".to_owned(), |position| position.to_string());
    let text = message.as_text().unwrap_or("");
    Message::from(format!("@{} {previous} {text}", tag.position))
}

impl std::ops::Deref for ChatRooms {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl ChatRooms {
    /// Rooms in this process only.
    pub fn new(announce: bool) -> Self {
        ChatRooms(Arc::new(Shared {
            rooms: Rooms::new().with_history(history()),
            users: Rooms::new(),
            lobby: Name::from(DEFAULT_ROOM),
            announce,
            spans_processes: false,
        }))
    }

    /// Rooms and users shared with other processes on `backplane`.
    #[allow(dead_code)] // the axum example has no backplane
    pub fn with_backplane(backplane: impl Backplane + Clone, announce: bool) -> Self {
        ChatRooms(Arc::new(Shared {
            rooms: Rooms::with_backplane("chat-rooms", backplane.clone()).with_history(history()),
            users: Rooms::with_backplane("chat-users", backplane),
            lobby: Name::from(DEFAULT_ROOM),
            announce,
            spans_processes: true,
        }))
    }

    /// `N online`, or with a backplane `N on this server`: membership is per process.
    fn online(&self, room: &Name) -> String {
        let count = self.rooms.count(room);
        if self.spans_processes {
            format!("{count} on this server")
        } else {
            format!("{count} online")
        }
    }

    /// A handler for the WebSocket request with this query string, or a 400 message.
    pub fn handler_for(&self, query: &str) -> Result<Chat, String> {
        let resume = resume_position(query)?;
        Ok(Chat {
            username: username(query)?.into(),
            room: match query_param(query, "room") {
                Ok(Some(room)) => room_name(&room)?.into(),
                Ok(None) => self.lobby.clone(),
                Err(_) => return Err("invalid room: it must be valid UTF-8\n".into()),
            },
            positions: resume.is_some() || matches!(query_param(query, "positions"), Ok(Some(_))),
            chat: self.clone(),
            joined: false,
        })
    }
}

/// The `resume` query parameter: the last position a returning client saw, if it is one.
fn resume_position(query: &str) -> Result<Option<Position>, String> {
    match query_param(query, "resume") {
        Ok(Some(position)) => position
            .parse()
            .map(Some)
            .map_err(|_| "invalid resume: it must be a position\n".to_owned()),
        _ => Ok(None),
    }
}

/// One chat user's connection.
pub struct Chat {
    username: Name,
    room: Name,
    /// The client asked for positions: it gets room messages tagged.
    positions: bool,
    chat: ChatRooms,
    /// Whether joining took this connection (it refuses one that already closed): only
    /// then is there a join, and so a leave, to announce.
    joined: bool,
}

impl Chat {
    fn announce(&self, room: &Name, what: &str) {
        if self.chat.announce {
            // The count is the room itself, so it cannot drift from who is really there.
            let online = self.chat.online(room);
            self.chat
                .rooms
                .broadcast_to(room, format!("{} {what} ({online})", self.username));
        }
    }

    fn join(&mut self, conn: &Connection, to: &str) {
        let to: Name = match room_name(to) {
            Ok(to) => to.into(),
            Err(problem) => {
                let _ = conn.send(format!("Cannot join: {}", problem.trim_end()));
                return;
            }
        };
        if *to == *self.room {
            let _ = conn.send(format!("You are in room {to}"));
            return;
        }
        let from = std::mem::replace(&mut self.room, to.clone());
        self.chat.rooms.leave(&from, conn.id());
        self.announce(&from, "left");
        let moved = format!("You are in room {to}");
        if self.positions {
            // Said before joining: whatever comes after it is of the new room, so a page
            // that keeps the last position it saw knows which room it is of.
            let _ = conn.send(moved);
            self.chat.rooms.join_tagged(to.clone(), conn);
            self.announce(&to, "joined");
        } else {
            // The classic order: the new room's notice first.
            self.chat.rooms.join(to.clone(), conn);
            self.announce(&to, "joined");
            let _ = conn.send(moved);
        }
    }

    fn private_message(&self, conn: &Connection, to_and_text: &str) {
        let Some((to, text)) = to_and_text.split_once(' ') else {
            let _ = conn.send("Cannot send: write /msg NAME text");
            return;
        };
        let line = format!("{} → {to}: {text}", self.username);
        let reached = self.chat.users.broadcast_to(&Name::from(to), line.as_str());
        if reached == 0 && !self.chat.spans_processes {
            let _ = conn.send(format!("Cannot send: {to} is not online"));
            return;
        }
        if to != &*self.username {
            // The sender's own tabs see what they wrote.
            self.chat.users.broadcast_to(&self.username, line);
        }
    }
}

impl WebSocketHandler for Chat {
    async fn on_open(&mut self, conn: &Connection) {
        let rooms = &self.chat.rooms;
        // A returning client's last position: checked when the handler was made, and read
        // again here rather than kept in the handler for the connection's whole life.
        let resume = conn
            .query()
            .and_then(|query| resume_position(query).ok().flatten());
        self.joined = match (resume, self.positions) {
            (Some(after), _) => match rooms.resume(self.room.clone(), conn, &after).await {
                Ok(resumed) => {
                    let _ = conn.send(format!("Recovered {} missed messages", resumed.replayed));
                    true
                }
                Err(ResumeError::Closed) => false,
                Err(why) => {
                    let _ = conn.send(format!("Could not recover the messages you missed: {why}"));
                    true
                }
            },
            (None, true) => rooms.join_tagged(self.room.clone(), conn),
            (None, false) => rooms.join(self.room.clone(), conn),
        };
        if self.joined {
            self.chat.users.join(self.username.clone(), conn);
            self.announce(&self.room, "joined");
        }
    }

    async fn on_close(&mut self, _conn: &Connection, _frame: &CloseFrame) {
        if self.joined {
            // The connection has already left its rooms, so it is not counted.
            self.announce(&self.room, "left");
        }
    }

    async fn on_message(&mut self, conn: &Connection, message: Message) {
        let Message::Text(text) = message else {
            return;
        };
        if let Some(room) = text.strip_prefix("/join ") {
            self.join(conn, room);
        } else if let Some(rest) = text.strip_prefix("/msg ") {
            self.private_message(conn, rest);
        } else {
            let line = format!("{}: {}", self.username, text);
            self.chat.rooms.broadcast_to(&self.room, line);
        }
    }
}

/// The `username` query parameter without surrounding whitespace, or what is wrong with it.
fn username(query: &str) -> Result<String, String> {
    let name = match query_param(query, "username") {
        Ok(Some(name)) => name,
        Ok(None) => String::new(),
        Err(_) => return Err("invalid username: it must be valid UTF-8\n".into()),
    };
    let name = name.trim();
    if name.is_empty() {
        return Err("missing username: connect to /api/Chat?username=NAME\n".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "username too long: at most {MAX_NAME_CHARS} characters\n"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("invalid username: control characters are not allowed\n".into());
    }
    Ok(name.to_owned())
}

/// A room name: 1 to 32 letters, digits, `-`, `_` or `.`, after trimming.
fn room_name(room: &str) -> Result<String, String> {
    let room = room.trim();
    if room.is_empty() {
        return Err("missing room name\n".into());
    }
    if room.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "room name too long: at most {MAX_NAME_CHARS} characters\n"
        ));
    }
    if !room
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("invalid room name: letters, digits, '-', '_' and '.' only\n".into());
    }
    Ok(room.to_owned())
}
