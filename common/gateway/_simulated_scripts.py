"""Lua run atomically inside Redis by the simulated gateway: the record-once steps."""

from __future__ import annotations

from typing import Final

# One round trip before any work: take the next injected fault (KEYS[1]); a fault that
# stands for a failed request ends it there. Then record-once: either the key already has a
# result (KEYS[2]), or we take the in-progress marker (KEYS[3]), or someone else holds it
# (Stripe's 409 idempotency_key_in_use). A detached card (ARGV[3] in the set KEYS[4]) is
# refused before anything executes: the marker is dropped again and nothing is recorded.
# Returns {state, stored record or '', fault or ''}.
BEGIN: Final = """
local fault = redis.call('LPOP', KEYS[1]) or ''
if fault ~= '' and fault ~= 'none' and fault ~= 'lost_response' and fault ~= 'decline' then
  return {'fault', '', fault}
end
local rec = redis.call('GET', KEYS[2])
if rec then return {'done', rec, fault} end
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'busy', '', fault} end
if redis.call('SISMEMBER', KEYS[4], ARGV[3]) == 1 then
  redis.call('DEL', KEYS[3])
  return {'detached', '', fault}
end
return {'acquired', '', fault}
"""

# The marker may have expired while we worked (a stalled process): whoever commits first wins
# and the loser gets the winner's record, so money still moves at most once per key. KEYS[5], the
# key's permanent list of executions, is what a PaymentIntent carrying the key in its metadata is
# at Stripe: it outlives the (prunable) idempotency record KEYS[1].
COMMIT: Final = """
local rec = redis.call('GET', KEYS[1])
if not rec then
  rec = ARGV[1]
  if tonumber(ARGV[5]) > 0 then
    redis.call('SET', KEYS[1], rec, 'EX', ARGV[5])
  else
    redis.call('SET', KEYS[1], rec)
  end
  redis.call('RPUSH', KEYS[3], ARGV[2])
  redis.call('RPUSH', KEYS[5], rec)
  if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[4], ARGV[4], 1) end
end
if redis.call('GET', KEYS[2]) == ARGV[6] then redis.call('DEL', KEYS[2]) end
return rec
"""

RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
