"""A shared cluster token on every gRPC call between coordinator and ranks."""

import grpc

HEADER = "x-cluster-token"


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls that do not carry the cluster's token (health checks included)."""

    def __init__(self, token: str):
        self.token = token

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation, details):
        metadata = dict(details.invocation_metadata or ())
        if metadata.get(HEADER) != self.token:
            return self._deny
        return await continuation(details)
