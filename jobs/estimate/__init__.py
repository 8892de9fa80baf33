"""`latentmill run SPEC --estimate`: measure one batch per stage on the real actors, then project the
whole job. Kept in three rooms: `measure` (runs batches on Ray, records times), `project` (pure
arithmetic on those times), `render` (the table). `job` ties them together for the command line."""
