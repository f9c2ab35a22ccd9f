// @generated automatically by Diesel CLI.

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
    rooms (name) {
        name -> Text,
        last_seq -> Int8,
    }
}

diesel::allow_tables_to_appear_in_same_query!(messages, rooms,);
