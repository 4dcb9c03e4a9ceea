-- 0001: streams (one row per stream: its head, locked FOR UPDATE by every append),
-- events (the signed lines, byte for byte as the file backend keeps them) and aux records.
CREATE TABLE orch_streams (
    project   text   NOT NULL,
    stream    text   NOT NULL,
    seq       bigint NOT NULL DEFAULT 0 CHECK (seq >= 0),
    last_line bytea  NOT NULL DEFAULT ''::bytea,
    PRIMARY KEY (project, stream)
);

CREATE TABLE orch_events (
    project text   NOT NULL,
    stream  text   NOT NULL,
    seq     bigint NOT NULL CHECK (seq >= 1),
    line    bytea  NOT NULL,
    PRIMARY KEY (project, stream, seq)
);

CREATE TABLE orch_aux (
    project text  NOT NULL,
    area    text  NOT NULL,
    key     text  NOT NULL,
    data    bytea NOT NULL,
    PRIMARY KEY (project, area, key)
);
