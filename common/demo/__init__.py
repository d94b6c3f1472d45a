"""`contacto-billing demo` (`make demo`): local or embedded PostgreSQL and Redis (`services`),
the Procfile's processes under honcho (`procs`), the FAQ's scenarios played against them
(`scenarios`), the timeline printed as they run (`timeline`), the state file a second terminal
can source (`envfile`), and the command itself (`run`). Nothing outside the demo imports it."""
