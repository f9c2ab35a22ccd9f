// The chat.v1 client over grpc-web, to the server the page came from.

import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { ChatService } from "./gen/chat/v1/chat_pb";

export type ChatClient = Client<typeof ChatService>;

export function chatClient(token: () => string | null): ChatClient {
  const bearer: Interceptor = (next) => async (req) => {
    const value = token();
    if (value) req.header.set("authorization", `Bearer ${value}`);
    return next(req);
  };
  const transport = createGrpcWebTransport({
    baseUrl: location.origin,
    useBinaryFormat: true,
    interceptors: [bearer],
  });
  return createClient(ChatService, transport);
}
