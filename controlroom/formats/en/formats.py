# Dates and times as the whole site shows them (settings.FORMAT_MODULE_PATH): ISO 8601 order, to the second, so
# that two events a few seconds apart (a refresh and its failure, an audit trail) can be told apart.
DATE_FORMAT = "Y-m-d"
DATETIME_FORMAT = "Y-m-d H:i:s"
TIME_FORMAT = "H:i:s"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
