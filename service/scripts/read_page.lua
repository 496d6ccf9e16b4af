#!lua flags=no-writes,allow-cross-slot-keys
-- Read pages of stored event frames for many jobs at once, bounded in events AND in bytes.
--
-- XRANGE alone can only bound a page by count, and a count of large events can be any size;
-- this reads in small chunks and stops once a page is full, so what the gateway receives
-- (and must hold until its client takes it) is bounded by the bytes it asked for. A page always
-- holds at least one frame when there is one: events of any allowed size replay in full.
-- One call serves many jobs (a catch-up of thousands of jobs is a few calls, not thousands);
-- once the frames read in this call pass ARGV[2] bytes, the remaining jobs are not read and
-- are answered `false`, so one call never holds Redis (or the reply) long.
-- Read-only (no-writes): it runs under maxmemory pressure and on replicas. On a Redis Cluster
-- one call reads the jobs of one node, whose keys span many slots: Redis refuses declared keys
-- of several slots, so there the keys come in ARGV instead (events, meta, after, most bytes per
-- job, no KEYS) and the script may touch them because they are local (allow-cross-slot-keys).
--
-- KEYS: for each job, its events stream then its meta hash
-- ARGV[1] most frames per page, ARGV[2] most bytes per call (after the first page),
-- then for each job: read after this stream id (exclusive), most bytes for its page
-- Returns one entry per job: {seq, status, more, frame, frame, ...} (seq and status from the
-- meta hash, nil when the job is unknown; more = 1 when the page stopped at a limit), or
-- false when the call's byte budget ran out before that job.
local max_frames, call_budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local call_bytes = 0

local function read_page(events, meta, after, max_bytes)
  local head = redis.call('HMGET', meta, 'seq', 'status')
  local page = {head[1], head[2], 0}
  local start = '(' .. after
  local frames, bytes = 0, 0
  -- Small first chunk: a page of large events then costs Redis little more than the page.
  local chunk = 4
  while frames < max_frames do
    local want = math.min(chunk, max_frames - frames)
    local entries = redis.call('XRANGE', events, start, '+', 'COUNT', want)
    for _, entry in ipairs(entries) do
      local frame = entry[2][2]
      if frames > 0 and bytes + #frame > max_bytes then
        page[3] = 1
        return page, bytes
      end
      frames = frames + 1
      bytes = bytes + #frame
      page[#page + 1] = frame
      start = '(' .. entry[1]
    end
    if #entries < want then
      return page, bytes
    end
    -- Size the next chunk from what was seen (at most 64 entries, so an odd large event
    -- after many small ones costs a bounded read).
    local left = math.floor((max_bytes - bytes) * frames / bytes) + 1
    chunk = math.max(1, math.min(64, left))
  end
  page[3] = 1
  return page, bytes
end

local pages = {}
-- Keys declared (KEYS) on a single Redis; on a cluster they come in ARGV (see above).
local in_argv = #KEYS == 0
local jobs = in_argv and (#ARGV - 2) / 4 or #KEYS / 2
for i = 1, jobs do
  local events, meta, after, max_bytes
  if in_argv then
    local at = 4 * i - 1
    events, meta, after, max_bytes = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  else
    events, meta, after, max_bytes = KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i + 1], ARGV[2 * i + 2]
  end
  if i > 1 and call_bytes > call_budget then
    pages[i] = false
  else
    local page, bytes = read_page(events, meta, after, tonumber(max_bytes))
    pages[i] = page
    call_bytes = call_bytes + bytes
  end
end
return pages
