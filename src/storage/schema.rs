// @generated automatically by Diesel CLI.

diesel::table! {
    access_revision (id) {
        id -> Int2,
        revision -> Int8,
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
    }
}

diesel::table! {
    room_users (user_id, room) {
        user_id -> Text,
        room -> Text,
        granted -> Bool,
        read_seq -> Int8,
        since_micros -> Int8,
    }
}

diesel::table! {
    rooms (name) {
        name -> Text,
        last_seq -> Int8,
        visibility -> Int2,
    }
}

diesel::allow_tables_to_appear_in_same_query!(access_revision, messages, room_users, rooms,);
