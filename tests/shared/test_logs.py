import json
import logging

from shared.logs import JsonFormatter, configure_logging, log_context, logging_dict


def test_json_lines_carry_the_job_and_shard_of_their_context(capsys):
    configure_logging("json", "INFO")
    log = logging.getLogger("dsgen.test")
    with log_context(job_id="j-1", shard=3):
        log.info("batch %d written", 2, extra={"samples": 4})
        with log_context(shard=None):  # None keeps the outer value
            log.warning("still here")
    log.error("outside")
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()[-3:]]
    assert lines[0] | {"ts": None} == {"ts": None, "level": "info", "logger": "dsgen.test", "msg": "batch 2 written",
                                       "job_id": "j-1", "shard": 3, "samples": 4}
    assert lines[1]["shard"] == 3 and lines[1]["level"] == "warning"
    assert "job_id" not in lines[2] and lines[2]["msg"] == "outside"


def test_exceptions_are_one_json_line():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), None)
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    doc = json.loads(JsonFormatter().format(record))
    assert "ValueError: bad" in doc["exc"] and "\n" not in JsonFormatter().format(record)


def test_uvicorn_gets_the_same_format():
    cfg = logging_dict("json")
    assert cfg["formatters"]["dsgen"]["()"] == "shared.logs.JsonFormatter"
    assert cfg["loggers"]["uvicorn.access"]["propagate"] is True
