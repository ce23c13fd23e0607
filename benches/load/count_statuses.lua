-- Appended to load.lua to count every response's status. It costs wrk some
-- speed, so only the loads whose answers must be told apart (204 from 401)
-- use it.
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
