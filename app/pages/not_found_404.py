"""Any path that is no page of the dashboard."""
import dash
from dash import dcc, html

dash.register_page(__name__, path="/404", title="ssah · not found")


def layout(**_):
    return html.Div([html.H1("No such page"),
                     html.P(["The dashboard has runs (", dcc.Link("/", href="/"), "), a run's overview and "
                             "intervention pages (/runs/ID, /runs/ID/intervene) and ",
                             dcc.Link("/compare", href="/compare"), "."])],
                    className="card")
