from orchestra.cli import app

app(prog_name="orchestra")
