-- wrk script for bench/serve.sh: GET the paths listed one a line in the file named by
-- $OBJECTS, cycling through them; each thread starts at its own place in the list.
local paths = {}
for line in io.lines(os.getenv("OBJECTS")) do
  paths[#paths + 1] = line
end
local i = 0

local threads = 0
function setup(thread)
  thread:set("start", threads * 7919)
  threads = threads + 1
end

function init(args)
  i = (start or 0) % #paths
end

function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
