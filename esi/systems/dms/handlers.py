"""What the DMS adapter does with each message type: pure logic over the DMS client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from esi.messages import Envelope, Handler
from esi.systems.dms.messages import CreateUser, GetPolicyInfo, PolicyInfo, UserCreated

if TYPE_CHECKING:
    from esi.systems.dms.client import DmsPolicy, DmsUser


class DmsApi(Protocol):
    async def create_user(
        self, *, user_id: str, name: str, email: str, phone: str | None = None, idempotency_key: str
    ) -> DmsUser: ...

    async def get_policy(self, policy_number: str) -> DmsPolicy: ...


def dms_handlers(client: DmsApi) -> dict[str, Handler]:
    async def create_user(envelope: Envelope, payload: CreateUser) -> list[Envelope]:
        # the key survives redeliveries and replays of this message: the DMS creates the user once
        user = await client.create_user(
            user_id=payload.user_id,
            name=payload.name,
            email=payload.email,
            phone=payload.phone,
            idempotency_key=f"esi-{envelope.message_id}",
        )
        answer = UserCreated(
            user_id=payload.user_id, dms_user_id=user.id, name=user.name, email=user.email, created_at=user.created_at
        )
        return [envelope.reply("user_created", answer.model_dump(exclude_none=True))]

    async def get_policy_info(envelope: Envelope, payload: GetPolicyInfo) -> list[Envelope]:
        policy = await client.get_policy(payload.policy_number)
        answer = PolicyInfo(
            policy_number=policy.policy_number,
            holder_name=policy.holder_name,
            status=policy.status,
            start_date=policy.start_date,
            end_date=policy.end_date,
            insurer=policy.insurer,
        )
        return [envelope.reply("policy_info_response", answer.model_dump(exclude_none=True))]

    return {"create_user": create_user, "get_policy_info": get_policy_info}
