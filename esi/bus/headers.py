"""Every AMQP header name esi writes or reads, in one place.

esi's own headers start with `x-esi-`; the others are written by RabbitMQ when it dead-letters a message (a hold
queue's TTL expiring, a delivery limit reached) and esi only reads or drops them. Queue arguments (`x-queue-type`,
`x-message-ttl`, ...) are not headers and stay with the topology.
"""

from __future__ import annotations

# --- esi's own ------------------------------------------------------------------------------------------------------

#: the number of the try a delivery is (1 for a fresh message); our own, never the body, never `x-death`
ATTEMPT_HEADER = "x-esi-attempt"

# the story of a failure, written on a retried message and on a dead letter
H_ERROR_CLASS = "x-esi-error-class"
H_ERROR_CODE = "x-esi-error-code"
H_ERROR_MESSAGE = "x-esi-error-message"
H_ADAPTER = "x-esi-adapter"
H_ATTEMPTS = "x-esi-attempts"
H_FIRST_FAILURE = "x-esi-first-failure"
H_LAST_FAILURE = "x-esi-last-failure"
H_ORIGINAL_EXCHANGE = "x-esi-original-exchange"
H_ORIGINAL_ROUTING_KEY = "x-esi-original-routing-key"
H_DEAD_LETTERED_AT = "x-esi-dead-lettered-at"
#: the message is not to be tried before this time (epoch milliseconds): the `Retry-After` the system asked for,
#: kept when it is longer than the ladder's longest rung (the message is parked again until then, no try spent)
H_NOT_BEFORE = "x-esi-not-before"

# written when an operator replays a dead letter
H_REPLAYED = "x-esi-replayed"
H_REPLAY_COUNT = "x-esi-replay-count"
#: who edited a dead letter's payload before replaying it (esi.dlq.edit)
H_EDITED_BY = "x-esi-edited-by"

# --- RabbitMQ's (read, or dropped on replay) ------------------------------------------------------------------------

H_DEATH = "x-death"
H_FIRST_DEATH_EXCHANGE = "x-first-death-exchange"
H_FIRST_DEATH_QUEUE = "x-first-death-queue"
H_FIRST_DEATH_REASON = "x-first-death-reason"
H_LAST_DEATH_EXCHANGE = "x-last-death-exchange"
H_LAST_DEATH_QUEUE = "x-last-death-queue"
H_LAST_DEATH_REASON = "x-last-death-reason"
H_DELIVERY_COUNT = "x-delivery-count"

#: what describes a failure: dropped from a replayed message, which starts its story afresh
FAILURE_HEADERS = (
    H_ERROR_CLASS,
    H_ERROR_CODE,
    H_ERROR_MESSAGE,
    H_ADAPTER,
    H_ATTEMPTS,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_DEAD_LETTERED_AT,
    H_NOT_BEFORE,
    H_DEATH,
    H_FIRST_DEATH_EXCHANGE,
    H_FIRST_DEATH_QUEUE,
    H_FIRST_DEATH_REASON,
    H_LAST_DEATH_EXCHANGE,
    H_LAST_DEATH_QUEUE,
    H_LAST_DEATH_REASON,
    H_DELIVERY_COUNT,
)
