// @generated automatically by Diesel CLI.

diesel::table! {
    access_revision (id) {
        id -> Int2,
        revision -> Int8,
    }
}

diesel::table! {
    message_events (room, seq) {
        room -> Text,
        seq -> Int8,
        kind -> Int2,
        message_seq -> Int8,
        actor_id -> Text,
        actor_name -> Text,
        content -> Text,
        reaction -> Text,
        added -> Bool,
        count -> Int4,
        at_micros -> Int8,
    }
}

diesel::table! {
    messages (room, seq) {
        room -> Text,
        seq -> Int8,
        sender_id -> Text,
        sender_name -> Text,
        content_type -> Int2,
        content -> Text,
        client_message_id -> Nullable<Text>,
        sent_at_micros -> Int8,
        reply_to_seq -> Int8,
        edited_at_micros -> Nullable<Int8>,
        deleted -> Bool,
        updated_seq -> Int8,
    }
}

diesel::table! {
    reactions (room, message_seq, reaction, user_id) {
        room -> Text,
        message_seq -> Int8,
        reaction -> Text,
        user_id -> Text,
        added_seq -> Int8,
    }
}

diesel::table! {
    room_users (user_id, room) {
        user_id -> Text,
        room -> Text,
        granted -> Bool,
        read_seq -> Int8,
        since_micros -> Int8,
        display_name -> Text,
    }
}

diesel::table! {
    rooms (name) {
        name -> Text,
        last_seq -> Int8,
        visibility -> Int2,
    }
}

diesel::table! {
    sanctions (room, user_id, kind) {
        room -> Text,
        user_id -> Text,
        kind -> Int2,
        until_micros -> Nullable<Int8>,
        reason -> Text,
        created_micros -> Int8,
    }
}

diesel::table! {
    webhook_outbox (id) {
        id -> Int8,
        room -> Text,
        seq -> Int8,
        payload -> Nullable<Bytea>,
        created_micros -> Int8,
        due_micros -> Int8,
        attempts -> Int4,
        lease -> Int8,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    access_revision,
    message_events,
    messages,
    reactions,
    room_users,
    rooms,
    sanctions,
    webhook_outbox,
);
