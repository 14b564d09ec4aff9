"""The insights service: organization activity on faust tables, queried over HTTP."""
