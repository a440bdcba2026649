"""A realistic synthetic park (leads, drivers, trips, claims) plus the ground truth that says who each lead is.

Deterministic by seed; drivers stream to disk so a million records keep memory flat. The claim window
and the milestones' money come from identity.domain (settings.CT4), like everywhere else.
"""

from __future__ import annotations

import csv
import os
from bisect import bisect
from collections import Counter
from contextlib import ExitStack
from datetime import date
from heapq import heappop, heappush
from pathlib import Path
from random import Random

from identity.domain import CLAIM_WINDOW_DAYS, MILESTONE_AMOUNTS

# --- Proportions -----------------------------------------------------------------------
# Every proportion the generator uses, in one place: name -> (value, what it is a share of).
# A float is a probability or a share; a dict is a categorical mix (weights sum to 1).
# The `case_*` rows are exact shares of all leads (counts are rounded, then sampled), so a
# run's summary can be compared with them; `common_name` also occurs naturally on top.
RATES: dict[str, tuple[float | dict[str, float], str]] = {
    # people
    "female": (0.10, "humans who are women (Lima ride-hailing fleets are mostly men)"),
    "foreign": (0.03, "humans with a CE (9 digits) instead of a DNI; Venezuelan names"),
    "given_names": ({"single": 0.40, "compound": 0.25, "pair": 0.35}, "how a human's given names are formed"),
    # leads
    "lead_converted": (0.75, "distinct lead humans who are (or become) drivers"),
    "lead_external_id": (0.30, "leads that carry an external_id (CAB-YYYY-NNNNNN)"),
    "lead_phone": (0.95, "leads that show a phone"),
    "lead_document": (0.65, "leads that show a document"),
    "lead_email": (0.40, "leads that show an e-mail"),
    "lead_plate": (0.25, "leads that show a plate"),
    "lead_birth_date": (0.30, "leads that show a birth date"),
    "lead_other_park": (0.10, "second applications made in another park"),
    "lead_working_hours": (0.90, "leads registered between 08:00 and 21:00 Lima time"),
    # hard cases, exact shares of leads
    "case_typo_phone": (0.040, "one digit changed or two adjacent digits swapped (own phone only)"),
    "case_typo_document": (0.030, "one digit changed, swapped, dropped or typed twice in the document"),
    "case_typo_email": (0.025, "one letter changed/dropped/doubled in the e-mail, or a misspelt domain"),
    "case_typo_plate": (0.020, "one character changed or two digits swapped in the plate"),
    "case_typo_name": (0.040, "one letter changed in one name (b/v, s/z, y/i, dropped h, ...)"),
    # How typists and forms mangle names and keys beyond one changed letter (issue 12 item 5).
    "case_name_dropped_letter": (0.020, "a letter dropped inside a name ('Javir' for Javier, 'Lui' for Luis)"),
    "case_name_inserted_letter": (0.015, "a letter inserted into a name ('Jorje' -> 'Jorjre', 'Marioa')"),
    "case_name_lost_first_letter": (0.015, "a name's first letter lost ('lor' for Flor, 'avier' for Javier)"),
    "name_error_on_given": (0.70, "dropped, inserted and lost letters that land on the first given name"),
    "case_document_two_digits": (0.015, "two digits of the document wrong (changed or swapped)"),
    "case_new_phone": (0.040, "converted humans' leads showing a new phone that no driver record carries"),
    "case_new_plate": (0.025, "converted humans' leads showing a car none of their records carries (sold, rented)"),
    "case_typo_birth_date": (0.010, "birth date with day and month swapped, or one digit of it wrong"),
    "case_swapped_namesake": (0.020, "lead humans with a different driver whose surnames are theirs swapped"),
    "case_family_phone": (0.030, "lead humans who give a relative driver's phone (same surname)"),
    "case_shared_car": (0.025, "lead humans (drivers) whose car is also on another driver's record"),
    "case_recycled_phone": (0.025, "lead humans whose old phone now belongs to another driver"),
    "case_common_name": (0.025, "lead humans whose full name is given to 1-2 more drivers (plus natural ties)"),
    "case_two_parks": (0.030, "lead humans (drivers) with a record in two parks, same document"),
    "case_applied_twice": (0.060, "leads that are one of two applications of the same human"),
    "case_no_identifier": (0.035, "leads with no usable phone, document, e-mail, plate or birth date"),
    "no_identifier_kind": ({"names_only": 0.50, "nothing": 0.15, "garbage": 0.35}, "what a no_identifier lead holds"),
    "garbage_field": (0.50, "fields a 'garbage' lead fills with a placeholder ('000000000', 'sin correo', ...)"),
    "family_sibling": (0.50, "relatives who are siblings (both surnames shared), else one surname"),
    "family_phone_on_both_records": (0.50, "driver lead humans whose own record also carries the family phone"),
    "shared_car_relative": (0.40, "car partners who are relatives (same paternal surname)"),
    "two_parks_other_phone": (0.30, "second park records with another phone"),
    "two_parks_other_plate": (0.30, "second park records with another car"),
    # lead formatting
    "lead_phone_format": (
        {"plain": 0.55, "spaced_intl": 0.15, "dashed": 0.10, "intl_digits": 0.08, "spaced": 0.07, "intl": 0.05},
        "987654321 / +51 987 654 321 / 987-654-321 / 51987654321 / 987 654 321 / +51987654321",
    ),
    "lead_document_format": (
        {"plain": 0.84, "spaces": 0.04, "dots": 0.04, "prefixed": 0.05, "padded": 0.03},
        "45678123 / 4567 8123 / 45.678.123 / DNI 45678123 / ' 45678123 '",
    ),
    "lead_document_excel": (0.45, "documents starting with 0 that lost their leading zeros in Excel"),
    "lead_email_format": ({"lower": 0.75, "mixed": 0.15, "upper": 0.05, "padded": 0.05}, "e-mail case and spaces"),
    "lead_plate_format": (
        {"dash": 0.45, "compact": 0.25, "lower": 0.12, "space": 0.12, "lower_dash": 0.06},
        "ABC-123 / ABC123 / abc123 / ABC 123 / abc-123",
    ),
    "lead_name_layout": (
        {"boxes": 0.52, "givens_in_first": 0.18, "drop_second_given": 0.05, "one_surname": 0.08,
         "wrong_boxes": 0.09, "one_box": 0.08},
        "where the lead's name parts were typed",
    ),
    "lead_name_upper": (0.30, "lead names typed in capitals"),
    "lead_name_lower": (0.03, "lead names typed in lower case"),
    "lead_name_no_accents": (0.40, "lead names typed without accents"),
    "lead_name_extra_spaces": (0.04, "lead names with doubled or trailing spaces"),
    # drivers
    "driver_phone": (0.98, "driver records with a phone"),
    "driver_document": (0.85, "driver records with a document"),
    "driver_email": (0.60, "driver records with an e-mail"),
    "driver_plate": (0.80, "driver records with a plate"),
    "driver_birth_date": (0.70, "driver records with a birth date"),
    "driver_license": ({"Q": 0.80, "other_letter": 0.08, "empty": 0.12}, "licence = letter + document number"),
    "driver_phone_format": (
        {"plain": 0.75, "intl": 0.20, "intl_digits": 0.05}, "987654321 / +51987654321 / 51987654321"),
    "driver_plate_format": ({"dash": 0.85, "compact": 0.15}, "ABC-123 / ABC123"),
    "driver_document_excel": (0.03, "driver documents starting with 0 stored without leading zeros"),
    "driver_name_upper": (0.15, "driver records with names in capitals"),
    "driver_name_no_accents": (0.25, "driver records with names without accents"),
    "driver_givens_in_first": (0.10, "driver records with both given names in first_name"),
    "driver_active": (0.70, "background driver records with status active"),
    "converted_active": (0.85, "converted lead drivers with status active"),
    "background_two_parks": (0.01, "share of all driver records that are the second park record of a human"),
    "background_family_phone": (0.004, "background drivers sharing a relative's phone on their records"),
    "background_shared_car": (0.02, "background drivers sharing the previous driver's car (shifts)"),
    # trips and claims
    "background_recent_trips": (0.05, "other drivers with trips in the last 14 days"),
    "trip_profile": ({"never": 0.30, "casual": 0.22, "regular": 0.24, "fulltime": 0.24}, "converted drivers' activity"),
    "second_park_trips": (0.30, "second park records that also drive recently"),
    "claim_mode": ({"all": 0.55, "partial": 0.15, "none": 0.30}, "claims of a lead that reached milestones"),
    "claim_partial_each": (0.50, "each milestone's claim present in 'partial' mode"),
    "claim_status": ({"paid": 0.50, "claimed": 0.35, "rejected": 0.15}, "status of a claim row"),
}

# Activity profile: (span days min, max, probability of driving on a day, trips min, max on a driving day).
TRIP_PROFILES = {
    "recent": (14, 14, 0.60, 1, 15),  # a driver without a lead, active in the last 14 days
    "casual": (3, 20, 0.25, 1, 2),
    "regular": (10, 60, 0.50, 1, 4),
    "fulltime": (20, 120, 0.80, 4, 15),
}
# The claims file's amount column: each milestone's money as the platform writes it ("25.00").
CLAIM_AMOUNTS = {m: f"{amount:.2f}" for m, amount in MILESTONE_AMOUNTS.items()}
DEFER_SPAN = 5000  # how many humans later a second park record may be written
BACKGROUND_HIRE_YEARS = 6
BIRTH_YEARS = (1965, 2004, 1992)  # first, last, most frequent

# The column contracts of SPEC §8, plus the two ground-truth files.
LEAD_COLUMNS = ("id", "external_id", "created_at", "first_name", "middle_name", "last_name", "phone",
                "document", "email", "plate", "park_id", "birth_date")
DRIVER_COLUMNS = ("driver_id", "park_id", "first_name", "middle_name", "last_name", "phone", "license_number",
                  "document", "email", "plate", "birth_date", "hire_date", "status")
TRIP_COLUMNS = ("driver_id", "date", "trips")
CLAIM_COLUMNS = ("lead_source_pk", "driver_id", "milestone", "amount", "status", "claimed_at")
# Ground truth, one row per lead in lead order:
# - human_id: the lead's human when that human has driver records, else empty (never became a driver);
# - true_driver_ids: every driver record of that human (two for two_parks), ';'-separated;
# - case_types: CASE_TYPES tags that hold for this lead's own content (a typo tag only when the typo
#   is in this lead; common_name when another driver human has the same given names and both
#   surnames as the lead's human; swapped_namesake when another driver human has the same given
#   names and the lead human's surnames in the other order; one_surname when the lead gives only
#   the paternal surname; new_phone when the lead's phone is a new number of the human's that no
#   driver record carries; shared_car when the lead shows the shared plate);
# - has_identifier: 1 when the lead shows a phone, document, e-mail, plate or birth date that is its
#   human's own (as on their records, possibly reformatted or typo'd). A relative's phone, a recycled
#   number that is someone else's now, a new number no record carries, and placeholders like
#   "000000000" do not count.
# Typos never land on another human's key: that would be a different, unlabelled case.
TRUTH_COLUMNS = ("lead_source_pk", "human_id", "true_driver_ids", "case_types", "has_identifier")
DRIVER_TRUTH_COLUMNS = ("driver_id", "human_id")
FILES = {
    "cabinet_leads.csv": LEAD_COLUMNS,
    "drivers.csv": DRIVER_COLUMNS,
    "trips.csv": TRIP_COLUMNS,
    "claims.csv": CLAIM_COLUMNS,
    "ground_truth.csv": TRUTH_COLUMNS,
    "drivers_truth.csv": DRIVER_TRUTH_COLUMNS,
}
CASE_TYPES = ("typo_phone", "typo_document", "document_two_digits", "typo_email", "typo_plate", "typo_birth_date",
              "typo_name", "name_dropped_letter", "name_inserted_letter", "name_lost_first_letter", "one_surname",
              "family_phone", "shared_car", "recycled_phone", "new_phone", "new_plate",
              "common_name", "swapped_namesake",
              "two_parks", "applied_twice", "no_identifier", "names_only", "not_a_driver")

# --- Name pools --------------------------------------------------------------------------
# Peruvian surnames, most frequent first. The first block carries rough national shares
# (per mille); the rest decays Zipf-like into a long tail of rarer ones.
SURNAME_TOP = (
    ("Quispe", 44), ("Flores", 27), ("Sánchez", 16.5), ("Rodríguez", 15), ("García", 14), ("Rojas", 13.5),
    ("Huamán", 12.5), ("Mamani", 12), ("Chávez", 11.5), ("Torres", 11), ("Díaz", 10.5), ("Ramos", 10),
    ("Vásquez", 9.5), ("Mendoza", 9.5), ("Castillo", 9), ("Gonzales", 8.5), ("Ramírez", 8.5), ("Espinoza", 8.5),
    ("Gutiérrez", 8), ("López", 8), ("Pérez", 8), ("Cruz", 7.5), ("Vargas", 7.5), ("Reyes", 7),
    ("Condori", 7), ("Ruiz", 6.5), ("Romero", 6.5), ("Fernández", 6), ("Huanca", 6), ("Apaza", 5.5),
    ("Medina", 5.5), ("Morales", 5.5), ("Salazar", 5), ("Herrera", 5), ("Silva", 5), ("Castro", 5),
    ("Aguilar", 4.8), ("Jiménez", 4.7), ("Martínez", 4.6), ("Hernández", 4.5),
)
SURNAME_TAIL = (
    "Ticona", "Ccama", "De la Cruz", "Palomino", "Paredes", "Cárdenas", "Guerrero", "Rivera", "Córdova", "Tello",
    "Vega", "Campos", "Cáceres", "Soto", "Delgado", "Zapata", "Álvarez", "Arias", "Benites", "Ayala", "Bravo",
    "Cabrera", "Calderón", "Carrasco", "Coaquira", "Contreras", "Cusi", "Del Águila", "Dávila", "Escobar",
    "Estrada", "Figueroa", "Gamarra", "Gómez", "Guevara", "Gallegos", "Huaraca", "Huayta", "Inga", "Jara",
    "Laura", "Leiva", "Luna", "Llanos", "Machaca", "Maldonado", "Marín", "Meza", "Miranda", "Montoya", "Muñoz",
    "Navarro", "Núñez", "Ortiz", "Pacheco", "Palacios", "Peña", "Pinedo", "Poma", "Ponce", "Príncipe",
    "Quiroz", "Ríos", "Rosales", "Saavedra", "Salas", "Salinas", "Santos", "Sosa", "Suárez", "Tapia",
    "Valdivia", "Valencia", "Valverde", "Vera", "Villanueva", "Yupanqui", "Zúñiga", "Chambi", "Choque",
    "Coila", "Huillca", "Huarcaya", "Llerena", "Loayza", "Lozano", "Manrique", "Mayta", "Mejía", "Melgarejo",
    "Meléndez", "Nina", "Ochoa", "Olivera", "Orellana", "Osorio", "Pari", "Pizarro", "Puma", "Alarcón",
    "Acuña", "Alvarado", "Aquino", "Atencio", "Bustamante", "Cahuana", "Calle", "Canales", "Carbajal",
    "Carhuamaca", "Ccahuana", "Ccori", "Chipana", "Chirinos", "Cisneros", "Colque", "Cóndor", "Crisóstomo",
    "Cuadros", "Cueva", "Curi", "Echevarría", "Enríquez", "Espíritu", "Falcón", "Galindo", "Gálvez", "Gamboa",
    "Guzmán", "Hinostroza", "Huallpa", "Huaylla", "Huerta", "Ibáñez", "Jáuregui", "Lazo", "León", "Lima",
    "Limachi", "Llamoca", "Ludeña", "Mallma", "Marca", "Meneses", "Moreno", "Mori", "Obregón", "Ojeda", "Oré",
    "Palma", "Pariona", "Pilco", "Pino", "Quintana", "Quintanilla", "Quiñones", "Rengifo", "Risco", "Robles",
    "Rubio", "Salvador", "Sandoval", "Sarmiento", "Sifuentes", "Solís", "Sulca", "Tacuri", "Taipe",
    "Tarazona", "Tito", "Toledo", "Tovar", "Trujillo", "Ugarte", "Ulloa", "Urbina", "Valdez", "Vela",
    "Velásquez", "Villar", "Villegas", "Yauri", "Zamora", "Zegarra", "Zevallos", "Ccopa", "Huachaca", "Quille",
    "Sallo", "Sumire", "Tintaya", "Uscamayta", "Huamaní", "Yucra", "Ancco", "Auccatoma", "Ccallo", "Cutipa",
    "Hancco", "Huarca", "Abanto", "Alcántara", "Ascencio", "Baca", "Bazán", "Cerna", "Chuquimango", "Cotrina",
    "Culqui", "Escalante", "Horna", "Huatay", "Julca", "Llontop", "Mego", "Paucar", "Quiliche", "Rabanal",
    "Sangay", "Terrones", "Vilca", "Yupari", "Zavaleta", "Ñahui", "Ñaupari", "Achahui", "Bendezú", "Cuba",
    "Farfán", "Garay", "Huertas", "Ipanaqué", "Jacinto", "Lévano", "Moscoso", "Neyra", "Pumacayo", "Rentería",
    "Sotomayor", "Tafur", "Untiveros", "Vílchez", "Ynga", "Aldana", "Barrientos", "Canchari", "Puente",
    "Retamozo", "Solano", "Tenorio", "Vilela", "Zárate", "Ayvar", "Bocanegra", "Chumpitaz", "Durand", "Gárate",
    "Lavado", "Mauricio", "Ñique", "Otiniano", "Polo", "Reátegui", "Saldaña", "Tuesta", "Chang", "Wong",
    "Chong", "Lam", "Lau", "Chiang", "Fung", "Tanaka", "Nakamura", "Higa", "Shimabukuro", "Kanashiro",
    "Yamashiro", "Tamashiro", "Bianchi", "Rossi", "Costa", "Massa", "Olcese", "Piaggio", "Echegaray",
    "Goicochea", "Aramburú", "Larrea", "Urquizo", "Zubiate",
)
SURNAME_TAIL_EXPONENT = 1.0

MALE_GIVEN = (
    "Juan", "José", "Luis", "Carlos", "Jorge", "Miguel", "César", "Víctor", "Pedro", "Manuel", "Jesús", "Julio",
    "Alberto", "Raúl", "Ricardo", "Fernando", "Javier", "Óscar", "Edwin", "Wilmer", "Jhon", "Jhonatan", "Kevin",
    "Cristian", "Franklin", "Elmer", "Percy", "Walter", "Hugo", "Rubén", "Andrés", "Alejandro", "Daniel",
    "Diego", "David", "Eduardo", "Enrique", "Ernesto", "Félix", "Gustavo", "Héctor", "Iván", "Jaime", "Joel",
    "Marco", "Mario", "Martín", "Nelson", "Orlando", "Pablo", "Renzo", "Roberto", "Rodrigo", "Rolando",
    "Segundo", "Santiago", "Sergio", "Teófilo", "Wilfredo", "Abel", "Ángel", "Antonio", "Arturo", "Bruno",
    "Christian", "Eder", "Elías", "Erick", "Freddy", "Gerson", "Henry", "Hernán", "Jair", "Josué", "Leonardo",
    "Lucio", "Máximo", "Nilton", "Noé", "Ronald", "Saúl", "Tomás", "Ulises", "Alfredo", "Armando", "Benjamín",
    "Braulio", "Clemente", "Darío", "Efraín", "Eloy", "Emilio", "Fidel", "Florencio", "Gabriel", "Germán",
    "Gilberto", "Guillermo", "Hilario", "Isaac", "Ismael", "Jhonny", "Jhordy", "Juvenal", "Lorenzo",
    "Marcelino", "Moisés", "Nicolás", "Néstor", "Omar", "Pascual", "Rafael", "Ramiro", "Richard", "Samuel",
    "Simón", "Vladimir", "Yuri", "Zenón", "Anthony", "Brayan", "Jefferson", "Luciano", "Alexis",
)
MALE_COMPOUND = (
    "Juan Carlos", "José Luis", "Luis Alberto", "Jorge Luis", "Juan José", "Carlos Alberto", "Miguel Ángel",
    "José Antonio", "Juan Pablo", "Víctor Hugo", "Luis Miguel", "Jean Pierre", "José Carlos", "Marco Antonio",
    "César Augusto", "Juan Manuel", "Jesús Alberto", "Julio César", "Luis Enrique", "Carlos Enrique",
    "José Manuel", "Juan de Dios", "José María", "Pedro Pablo", "Luis Ángel",
)
FEMALE_GIVEN = (
    "María", "Rosa", "Carmen", "Ana", "Luz", "Julia", "Elizabeth", "Milagros", "Patricia", "Gladys", "Carla",
    "Diana", "Jessica", "Karina", "Lucía", "Sofía", "Ruth", "Sandra", "Silvia", "Verónica", "Yolanda", "Flor",
    "Gabriela", "Giovanna", "Judith", "Katherine", "Liliana", "Lourdes", "Marleni", "Mónica", "Nancy", "Norma",
    "Pamela", "Raquel", "Roxana", "Sonia", "Susana", "Teresa", "Vanessa", "Yesenia", "Zoila", "Angélica",
    "Beatriz", "Cinthia", "Daniela", "Erika", "Fiorella", "Inés", "Janet", "Jackeline", "Maribel", "Melissa",
    "Nelly", "Olga", "Paola", "Rocío", "Sara", "Shirley", "Tatiana", "Yanet", "Yessica", "Evelyn", "Magaly",
    "Mercedes", "Noemí", "Elena", "Isabel", "Cecilia", "Consuelo", "Dora",
)
FEMALE_COMPOUND = (
    "María del Pilar", "María del Carmen", "María de los Ángeles", "Rosa María", "Ana María", "Luz Marina",
    "María Elena", "María Isabel", "Ana Lucía", "Flor de María", "Rosa Elvira", "Carmen Rosa", "Juana Rosa",
    "María Teresa", "Luz María", "María Fernanda", "María José", "Ana Cecilia", "María Jesús", "María Luisa",
)
# Venezuelans are most of Lima's foreign drivers.
FOREIGN_MALE_GIVEN = (
    "José", "Luis", "Carlos", "Jesús", "Yorman", "Yender", "Yonathan", "Andrés", "Daniel", "Freddy", "Wilmer",
    "Yohan", "Ender", "Richard", "Eduardo", "Gregorio", "Jhoan", "Anderson", "Alexander", "Kelvin", "Leonel",
    "Yoel", "Rafael", "Omar", "Deivis", "Jhonny", "Yeferson", "Ronald",
)
FOREIGN_MALE_COMPOUND = (
    "Jean Carlos", "Luis Ángel", "José Gregorio", "Miguel Ángel", "Carlos Eduardo", "Luis Alejandro",
    "José Rafael", "Juan Andrés",
)
FOREIGN_FEMALE_GIVEN = (
    "Daniela", "Génesis", "Yusleidy", "Yuleisy", "Mariangel", "Yelitza", "Oriana", "Andreína", "Yenny",
    "Yurimar", "Karla", "Nathaly", "Dayana", "Maryori", "Yolimar", "Ana", "Marbelis",
)
FOREIGN_FEMALE_COMPOUND = (
    "María Gabriela", "María José", "María Alejandra", "María Fernanda", "Ana Karina", "Luisa Fernanda",
)
FOREIGN_SURNAMES = (
    "González", "Rodríguez", "Pérez", "Hernández", "García", "Martínez", "López", "Díaz", "Sánchez", "Ramírez",
    "Rojas", "Gutiérrez", "Morales", "Contreras", "Mendoza", "Medina", "Blanco", "Suárez", "Briceño", "Marcano",
    "Rivas", "Salazar", "Carrillo", "Guerrero", "Colmenares", "Villegas", "Hidalgo", "Parra", "Zambrano",
    "Acosta", "Bolívar", "Moreno", "Peña", "Rondón", "Linares", "Arteaga", "Uzcátegui", "Chirinos", "Torres",
    "Romero", "Castillo", "Fernández", "Silva", "Márquez", "Flores", "Gil", "Vásquez", "Rangel", "Mora",
    "Quintero",
)
NAME_PARTICLES = frozenset({"de", "del", "la", "las", "los", "y"})

EMAIL_DOMAINS = ({"gmail.com": 0.66, "hotmail.com": 0.22, "outlook.com": 0.05, "yahoo.es": 0.03,
                  "yahoo.com": 0.02, "icloud.com": 0.02})
EMAIL_DOMAIN_TYPOS = {
    "gmail.com": ("gmial.com", "gmai.com", "gmail.con", "gamil.com", "gmail.co"),
    "hotmail.com": ("hotmial.com", "hotmal.com", "hotmail.con", "hotmai.com"),
    "outlook.com": ("outlok.com", "outlook.con"),
    "yahoo.es": ("yaho.es", "yahoo.e"),
    "yahoo.com": ("yaho.com", "yahoo.con"),
    "icloud.com": ("icloud.con", "iclod.com"),
}
GARBAGE = {
    "phone": ("000000000", "999999999", "123456789", "0", "-", "sin número", "no tiene"),
    "document": ("00000000", "12345678", "11111111", "-", "0", "sin dni"),
    "email": ("sin correo", "no tiene", "-", "notiene@gmail.com", "x@x.com", "correo@correo.com"),
    "plate": ("-", "sin placa", "no tiene", "XXX-000", "0"),
    "birth_date": ("1900-01-01",),
}
# Typists' Spanish confusions, tried before a plain one-letter slip.
# Name errors beyond a changed letter, each a hard-case tag of its own (name_<kind>).
NAME_ERRORS = ("dropped_letter", "inserted_letter", "lost_first_letter")
NAME_TYPO_SWAPS = (("v", "b"), ("b", "v"), ("z", "s"), ("s", "z"), ("c", "s"), ("y", "i"), ("i", "y"),
                   ("ll", "y"), ("j", "g"), ("g", "j"), ("n", "m"), ("m", "n"), ("qu", "k"))
LICENCE_OTHER_LETTERS = "ABCDFHIJKLMNPUVWY"
LIMA_OFFSET = "-05:00"  # Lima has no daylight saving time

_ACCENTS = str.maketrans("áéíóúüñÁÉÍÓÚÜÑ", "aeiouunAEIOUUN")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_COMMON_LETTERS = "aeioulnrs"  # what a slipping finger adds to a Spanish name, mostly
_PLATE_LLL = 26 * 26 * 26 * 1000
_PLATE_SPACE = _PLATE_LLL + 26 * 10 * 26 * 1000
_DNI_SPACE = 80_000_000  # DNIs handed out so far start with 0-7
_FEISTEL_HALF = 10_000


_SCALARS = {name: value for name, (value, _) in RATES.items() if isinstance(value, float)}


def rate(name: str) -> float:
    """A scalar proportion from RATES."""
    return _SCALARS[name]


class _Mix:
    """A categorical mix drawn with one random number."""

    __slots__ = ("cum", "values")

    def __init__(self, weights: dict[str, float] | list[tuple[str, float]]):
        items = list(weights.items()) if isinstance(weights, dict) else list(weights)
        total, cum = 0.0, []
        for _, weight in items:
            total += weight
            cum.append(total)
        self.cum = [c / total for c in cum]
        self.cum[-1] = 1.0  # random() < 1.0, so bisect never runs past the last value
        self.values = [value for value, _ in items]

    def draw(self, rnd) -> str:
        return self.values[bisect(self.cum, rnd())]


def _mix(name: str) -> _Mix:
    value = RATES[name][0]
    assert isinstance(value, dict)
    return _Mix(value)


def _zipf(names, exponent: float = 1.0, offset: float = 2.0) -> _Mix:
    return _Mix([(name, 1.0 / (rank + offset) ** exponent) for rank, name in enumerate(names)])


def _surname_mix() -> _Mix:
    top = list(SURNAME_TOP)
    anchor_rank, anchor_weight = len(top), top[-1][1]
    tail = [(name, anchor_weight * (anchor_rank / (anchor_rank + 1 + i)) ** SURNAME_TAIL_EXPONENT)
            for i, name in enumerate(SURNAME_TAIL)]
    return _Mix(top + tail)


def _split_compound(name: str) -> tuple[str, str]:
    first, _, rest = name.partition(" ")
    return first, rest


class _Pools:
    """Name and format mixes, built once per run from the tables above."""

    def __init__(self):
        self.surname = _surname_mix()
        self.foreign_surname = _zipf(FOREIGN_SURNAMES, 1.0, 3.0)
        self.given = {
            (False, False): _zipf(MALE_GIVEN, 1.0, 6.0), (True, False): _zipf(FEMALE_GIVEN, 1.0, 6.0),
            (False, True): _zipf(FOREIGN_MALE_GIVEN, 1.0, 3.0), (True, True): _zipf(FOREIGN_FEMALE_GIVEN, 1.0, 3.0),
        }
        self.compound = {
            (False, False): _zipf(MALE_COMPOUND, 1.0, 3.0), (True, False): _zipf(FEMALE_COMPOUND, 1.0, 3.0),
            (False, True): _zipf(FOREIGN_MALE_COMPOUND), (True, True): _zipf(FOREIGN_FEMALE_COMPOUND),
        }
        self.given_kind = _mix("given_names")
        self.email_domain = _Mix(EMAIL_DOMAINS)
        self.license = _mix("driver_license")
        self.driver_phone_format = _mix("driver_phone_format")
        self.driver_plate_format = _mix("driver_plate_format")
        self.lead_phone_format = _mix("lead_phone_format")
        self.lead_document_format = _mix("lead_document_format")
        self.lead_email_format = _mix("lead_email_format")
        self.lead_plate_format = _mix("lead_plate_format")
        self.lead_name_layout = _mix("lead_name_layout")
        self.no_identifier_kind = _mix("no_identifier_kind")
        self.trip_profile = _mix("trip_profile")
        self.claim_mode = _mix("claim_mode")
        self.claim_status = _mix("claim_status")


# --- Unique keys ---------------------------------------------------------------------------


class _Keys:
    """Phones, DNIs, CEs and plates as seeded bijections of a human index.

    Unique by construction and invertible, so "is this value somebody's?" needs no set of a
    million values: a typo that lands on another human's key is rerolled instead.
    """

    def __init__(self, seed: int):
        r = Random(f"ct4-demo:{seed}:keys")
        self.phone_rounds = [[r.randrange(_FEISTEL_HALF) for _ in range(_FEISTEL_HALF)] for _ in range(3)]
        self.dni_rounds = [[r.randrange(_FEISTEL_HALF) for _ in range(_FEISTEL_HALF)] for _ in range(3)]
        self.plate_a, self.plate_b = 15_485_863, r.randrange(_PLATE_SPACE)
        self.plate_a_inv = pow(self.plate_a, -1, _PLATE_SPACE)
        self.ce_a, self.ce_b = 7_368_787, r.randrange(10_000_000)
        self.ce_a_inv = pow(self.ce_a, -1, 10_000_000)
        self.phones_used = 0  # indices below these are (or were) somebody's
        self.plates_used = 0
        self.humans = 0

    @staticmethod
    def _feistel(x: int, rounds) -> int:
        left, right = divmod(x, _FEISTEL_HALF)
        for table in rounds:
            left, right = right, (left + table[right]) % _FEISTEL_HALF
        return left * _FEISTEL_HALF + right

    @staticmethod
    def _feistel_inverse(x: int, rounds) -> int:
        left, right = divmod(x, _FEISTEL_HALF)
        for table in reversed(rounds):
            left, right = (right - table[left]) % _FEISTEL_HALF, left
        return left * _FEISTEL_HALF + right

    def phone(self, i: int) -> str:
        return "9%08d" % self._feistel(i, self.phone_rounds)

    def phone_taken(self, digits: str) -> bool:
        if len(digits) != 9 or digits[0] != "9" or not digits.isdigit():
            return False
        return self._feistel_inverse(int(digits[1:]), self.phone_rounds) < self.phones_used

    def dni(self, i: int) -> str:
        x = self._feistel(i, self.dni_rounds)
        while x >= _DNI_SPACE:  # cycle-walking keeps the map a bijection on [0, _DNI_SPACE)
            x = self._feistel(x, self.dni_rounds)
        return "%08d" % x

    def ce(self, i: int) -> str:
        return "00%07d" % ((self.ce_a * i + self.ce_b) % 10_000_000)

    def document_taken(self, digits: str) -> bool:
        if not digits.isdigit():
            return False
        if len(digits) == 8:
            x = int(digits)
            if x >= _DNI_SPACE:
                return False
            x = self._feistel_inverse(x, self.dni_rounds)
            while x >= _DNI_SPACE:
                x = self._feistel_inverse(x, self.dni_rounds)
            return x < self.humans
        if len(digits) == 9 and digits.startswith("00"):
            return (self.ce_a_inv * (int(digits) - self.ce_b)) % 10_000_000 < self.humans
        return False

    def plate(self, i: int) -> str:
        x = (self.plate_a * i + self.plate_b) % _PLATE_SPACE
        if x < _PLATE_LLL:
            letters, digits = divmod(x, 1000)
            a, rest = divmod(letters, 676)
            b, c = divmod(rest, 26)
            return f"{_LETTERS[a]}{_LETTERS[b]}{_LETTERS[c]}{digits:03d}"
        x -= _PLATE_LLL
        head, digits = divmod(x, 1000)
        a, rest = divmod(head, 260)
        n, c = divmod(rest, 26)
        return f"{_LETTERS[a]}{n}{_LETTERS[c]}{digits:03d}"

    def plate_taken(self, plate: str) -> bool:
        if len(plate) != 6 or not plate[3:].isdigit():
            return False
        a, b, c = plate[0], plate[1], plate[2]
        if a not in _LETTERS or c not in _LETTERS:
            return False
        if b in _LETTERS:
            x = ((_LETTERS.index(a) * 26 + _LETTERS.index(b)) * 26 + _LETTERS.index(c)) * 1000 + int(plate[3:])
        elif b.isdigit():
            x = _PLATE_LLL + ((_LETTERS.index(a) * 10 + int(b)) * 26 + _LETTERS.index(c)) * 1000 + int(plate[3:])
        else:
            return False
        return (self.plate_a_inv * (x - self.plate_b)) % _PLATE_SPACE < self.plates_used

    def extra_phone(self) -> str:
        """A fresh phone for a human who has more than one (a new number, a second park)."""
        self.phones_used += 1
        return self.phone(self.phones_used - 1)

    def extra_plate(self) -> str:
        self.plates_used += 1
        return self.plate(self.plates_used - 1)


# --- Humans and records ------------------------------------------------------------------------


class _Record:
    """One driver record as written to drivers.csv."""

    __slots__ = ("driver_id", "park", "phone", "plate", "hire", "row")

    def __init__(self, driver_id, park, phone, plate, hire, row):
        self.driver_id, self.park, self.phone, self.plate, self.hire, self.row = (
            driver_id, park, phone, plate, hire, row)


class _Human:
    """A person: canonical name parts and keys; driver records and leads for the planned ones."""

    __slots__ = ("idx", "female", "foreign", "g1", "g2", "pat", "mat", "birth", "phone", "doc", "plate",
                 "email", "records", "leads", "park", "lead_phone", "lead_phone_kind", "cases", "hire",
                 "own_phones")

    def __init__(self, idx, female, foreign, g1, g2, pat, mat, birth, phone, doc, plate):
        self.idx, self.female, self.foreign = idx, female, foreign
        self.g1, self.g2, self.pat, self.mat = g1, g2, pat, mat
        self.birth, self.phone, self.doc, self.plate = birth, phone, doc, plate
        self.email = None
        self.records: list[_Record] = []
        self.leads: list[_Lead] = []
        self.park = None
        self.lead_phone = phone
        self.lead_phone_kind = "own"
        self.cases: set[str] = set()
        self.hire = None
        self.own_phones = {phone}

    @property
    def human_id(self) -> str:
        return "H%07d" % self.idx

    @property
    def name_key(self) -> tuple[str, str, str, str]:
        return (self.g1, self.g2, self.pat, self.mat)

    @property
    def is_driver(self) -> bool:
        return bool(self.records)


class _Lead:
    __slots__ = ("human", "day", "second", "park", "id", "external_id", "no_id_kind", "phone", "phone_kind",
                 "document", "email", "plate", "birth", "garbage", "typos", "cases", "has_identifier")

    def __init__(self, human, day, second, park):
        self.human, self.day, self.second, self.park = human, day, second, park
        self.id = self.external_id = self.no_id_kind = None
        self.phone = self.phone_kind = self.document = self.email = self.plate = self.birth = None
        self.garbage: dict[str, str] = {}
        self.typos: set[str] = set()
        self.cases: list[str] = []
        self.has_identifier = 0

    @property
    def source_pk(self) -> str:
        return self.external_id or str(self.id)

    @property
    def timestamp(self) -> int:
        return self.day * 86400 + self.second


def _ascii(text: str) -> str:
    return text.translate(_ACCENTS)


def _email_token(text: str) -> str:
    return text.translate(_ACCENTS).lower().replace(" ", "")


def _initial(given: str) -> str:
    for word in given.split():
        if word.lower() not in NAME_PARTICLES:
            return _email_token(word)[:1]
    return ""


class _Generator:
    """One run: planning the lead humans and hard cases, then streaming every file."""

    def __init__(self, *, drivers: int, leads: int, seed: int, parks: int, days: int, end_date: date):
        self.n_drivers, self.n_leads, self.seed, self.n_parks, self.days = drivers, leads, seed, parks, days
        self.end = end_date.toordinal()
        self.start = self.end - days + 1
        self.pools = _Pools()
        self.keys = _Keys(seed)
        self.emails: set[str] = set()
        self.rng = Random(f"ct4-demo:{seed}:plan")
        self.parks = [f"{self.rng.getrandbits(128):032x}" for _ in range(parks)]
        self.park_mix = _Mix([(p, 1.0 / (k + 1)) for k, p in enumerate(self.parks)])
        self.iso_cache: dict[int, str] = {}
        first, last, mode = BIRTH_YEARS
        self.birth_lo, self.birth_hi = date(first, 1, 1).toordinal(), date(last, 12, 31).toordinal()
        self.birth_mode = date(mode, 7, 1).toordinal()
        self.counts = Counter()

    # -- small helpers ------------------------------------------------------------------

    def iso(self, ordinal: int) -> str:
        value = self.iso_cache.get(ordinal)
        if value is None:
            value = self.iso_cache[ordinal] = date.fromordinal(ordinal).isoformat()
        return value

    def timestamp(self, ordinal: int, second: int) -> str:
        h, rest = divmod(second, 3600)
        return f"{self.iso(ordinal)}T{h:02d}:{rest // 60:02d}:{rest % 60:02d}{LIMA_OFFSET}"

    def other_park(self, r: Random, park: str) -> str:
        choices = [p for p in self.parks if p != park]
        return choices[int(r.random() * len(choices))]

    def given_names(self, r: Random, female: bool, foreign: bool) -> tuple[str, str]:
        kind = self.pools.given_kind.draw(r.random)
        key = (female, foreign)
        if kind == "compound":
            return _split_compound(self.pools.compound[key].draw(r.random))
        first = self.pools.given[key].draw(r.random)
        if kind == "pair":
            second = self.pools.given[key].draw(r.random)
            return first, ("" if second == first else second)
        return first, ""

    def surname(self, r: Random, foreign: bool) -> str:
        return (self.pools.foreign_surname if foreign else self.pools.surname).draw(r.random)

    def human_make(self, r: Random, idx: int, *, female=None, foreign=None, given=None, pat=None, mat=None,
                   phone=None) -> _Human:
        rnd = r.random
        if foreign is None:
            foreign = rnd() < _SCALARS["foreign"]
        if female is None:
            female = rnd() < _SCALARS["female"]
        g1, g2 = given if given is not None else self.given_names(r, female, foreign)
        pat = pat or self.surname(r, foreign)
        mat = mat or self.surname(r, foreign)
        birth = int(r.triangular(self.birth_lo, self.birth_hi, self.birth_mode))
        doc = self.keys.ce(idx) if foreign else self.keys.dni(idx)
        return _Human(idx, female, foreign, g1, g2, pat, mat, birth, phone or self.keys.phone(idx), doc,
                      self.keys.plate(idx))

    def email_of(self, r: Random, h: _Human) -> str:
        if h.email is None:
            f, p, m = _email_token(h.g1), _email_token(h.pat), _email_token(h.mat)
            g2i, yy = _initial(h.g2), "%02d" % (date.fromordinal(h.birth).year % 100)
            pattern = int(r.random() * 7)
            local = (f"{f[:1]}{g2i}{p}{yy}", f"{f}.{p}", f"{f}{p}{m[:1]}", f"{f}_{p}{int(r.random() * 99) + 1}",
                     f"{p}.{f}{yy}", f"{f}.{p}.{m}", f"{f}{g2i}{p}")[pattern]
            domain = self.pools.email_domain.draw(r.random)
            email = f"{local}@{domain}"
            while email in self.emails:  # an e-mail address belongs to one person
                email = f"{local}{int(r.random() * 999) + 1}@{domain}"
            self.emails.add(email)
            h.email = email
        return h.email

    # -- driver records --------------------------------------------------------------------

    def record_make(self, r: Random, h: _Human, *, park: str, hire: int, active: float, phone: str,
                    plate: str, force_doc: bool = False, force_plate: bool = False,
                    force_phone: bool = False) -> _Record:
        rnd, pools, p = r.random, self.pools, _SCALARS
        driver_id = "%032x" % r.getrandbits(128)
        g1, g2, last = h.g1, h.g2, f"{h.pat} {h.mat}"
        if rnd() < p["driver_givens_in_first"] and g2:
            g1, g2 = f"{g1} {g2}", ""
        if rnd() < p["driver_name_no_accents"]:
            g1, g2, last = g1.translate(_ACCENTS), g2.translate(_ACCENTS), last.translate(_ACCENTS)
        if rnd() < p["driver_name_upper"]:
            g1, g2, last = g1.upper(), g2.upper(), last.upper()
        shown_phone = ""
        if force_phone or rnd() < p["driver_phone"]:
            fmt = pools.driver_phone_format.draw(rnd)
            shown_phone = phone if fmt == "plain" else ("+51" + phone if fmt == "intl" else "51" + phone)
        document = ""
        if force_doc or rnd() < p["driver_document"]:
            document = h.doc
            if document[0] == "0" and not force_doc and rnd() < p["driver_document_excel"]:
                document = document.lstrip("0")
        licence_kind = pools.license.draw(rnd)
        if licence_kind == "empty":
            licence = ""
        elif licence_kind == "Q":
            licence = "Q" + h.doc
        else:
            licence = LICENCE_OTHER_LETTERS[int(rnd() * len(LICENCE_OTHER_LETTERS))] + h.doc
        email = self.email_of(r, h) if rnd() < p["driver_email"] else ""
        shown_plate = ""
        if plate and (force_plate or rnd() < p["driver_plate"]):
            shown_plate = (plate[:3] + "-" + plate[3:] if pools.driver_plate_format.draw(rnd) == "dash" else plate)
        birth = self.iso(h.birth) if rnd() < p["driver_birth_date"] else ""
        status = "active" if rnd() < active else "inactive"
        row = (driver_id, park, g1, g2, last, shown_phone, licence, document, email, shown_plate, birth,
               self.iso(hire), status)
        return _Record(driver_id, park, phone, plate, hire, row)

    # -- planning ------------------------------------------------------------------------------

    def plan(self) -> None:
        """Choose the lead humans, their hard cases and partners, their records and leads."""
        r, L = self.rng, self.n_leads

        def count(name: str) -> int:
            return round(rate(name) * L)

        n_pairs = round(rate("case_applied_twice") * L / 2)
        n_humans = L - n_pairs
        n_conv = round(rate("lead_converted") * n_humans)
        n_nd = n_humans - n_conv
        two_parks_ok = self.n_parks >= 2
        n_two_parks = min(count("case_two_parks"), n_conv) if two_parks_ok else 0
        n_bg2 = round(rate("background_two_parks") * self.n_drivers) if two_parks_ok else 0
        n_family, n_recycled = count("case_family_phone"), count("case_recycled_phone")
        n_shared, n_common = min(count("case_shared_car"), n_conv), count("case_common_name")
        twins = [1 + int(r.random() * 2) for _ in range(n_common)]
        n_swapped = count("case_swapped_namesake")
        n_partners = n_family + n_recycled + n_shared + sum(twins) + n_swapped
        self.n_driver_humans = self.n_drivers - n_two_parks - n_bg2
        need = n_conv + n_partners + n_bg2
        if need > self.n_driver_humans or n_family + n_recycled > n_humans:
            raise ValueError(f"--drivers {self.n_drivers} is too small for --leads {L}: "
                             f"about {need + n_two_parks + n_bg2} driver records are needed")
        self.n_humans = self.n_driver_humans + n_nd
        self.keys.humans = self.keys.phones_used = self.keys.plates_used = self.n_humans
        # Placeholders typed instead of data; one that happens to be a real key is left out.
        taken = {"phone": self.keys.phone_taken, "document": self.keys.document_taken,
                 "plate": lambda v: self.keys.plate_taken(v.replace("-", ""))}
        self.garbage = {field: [v for v in values if field not in taken or not taken[field](v)]
                        for field, values in GARBAGE.items()}

        sample = r.sample(range(self.n_driver_humans), need)
        conv_idx, partner_idx = sample[:n_conv], iter(sample[n_conv:n_conv + n_partners])
        self.bg_two_parks = set(sample[n_conv + n_partners:])
        conv = [self.human_make(r, i) for i in conv_idx]
        nd = [self.human_make(r, self.n_driver_humans + k) for k in range(n_nd)]
        lead_humans = conv + nd
        self.planned: dict[int, _Human] = {h.idx: h for h in conv}
        self.lead_humans = lead_humans
        converted = {id(h) for h in conv}

        for h in r.sample(conv, n_two_parks):
            h.cases.add("two_parks")
        for h in r.sample(conv, n_shared):
            h.cases.add("shared_car")
        family = r.sample(lead_humans, n_family)
        for h in family:
            h.cases.add("family_phone")
        for h in r.sample([h for h in lead_humans if "family_phone" not in h.cases], n_recycled):
            h.cases.add("recycled_phone")
        common = r.sample(lead_humans, n_common)
        for h in common:
            h.cases.add("common_name")
        for h in r.sample(lead_humans, n_pairs):
            h.cases.add("applied_twice")
        # Namesake traps: another driver with the same given names and the surnames the other way round.
        two_surnames = [h for h in lead_humans if h.pat != h.mat and "common_name" not in h.cases]
        swapped = r.sample(two_surnames, min(n_swapped, len(two_surnames)))
        for h in swapped:
            h.cases.add("swapped_namesake")

        # Lead dates and parks. A converted human's hire date is drawn like any driver's, apart
        # from the lead's date: "hired in the lead's park days after the lead" is then as rare for
        # the true driver as for a namesake, so no rule can lean on it here (issue 12: such a
        # rule made 58 wrong links of 65 on data where the coupling did not hold).
        for h in lead_humans:
            h.park = self.park_mix.draw(r.random)
            first_day = self.start + int(r.random() * self.days)
            days = [first_day]
            if "applied_twice" in h.cases:
                gap = 1 + int(r.random() * 30)
                days.append(first_day + gap if first_day + gap <= self.end else max(self.start, first_day - gap))
                days.sort()
            for k, day in enumerate(days):
                park = h.park if k == 0 or r.random() >= rate("lead_other_park") or self.n_parks < 2 \
                    else self.other_park(r, h.park)
                h.leads.append(_Lead(h, day, self.lead_second(r), park))
            if id(h) in converted:
                h.hire = self.end - int(r.random() * 365 * BACKGROUND_HIRE_YEARS)

        # Partners: drivers whose data make the lead humans' hard cases.
        partners: list[_Human] = []
        for h in family:
            sibling = r.random() < rate("family_sibling")
            j = self.partner_make(r, next(partner_idx), h, pat=h.pat, mat=h.mat if sibling else None,
                                  foreign=h.foreign)
            j.cases.add("family_partner")
            h.lead_phone, h.lead_phone_kind = j.phone, "family"
            if id(h) in converted and r.random() < rate("family_phone_on_both_records"):
                h.own_phones = {j.phone}
            partners.append(j)
        for h in lead_humans:
            if "recycled_phone" in h.cases:
                j = self.stranger_make(r, next(partner_idx), h)
                j.cases.add("recycled_partner")
                h.lead_phone, h.lead_phone_kind = j.phone, "recycled"
                partners.append(j)
        for h in lead_humans:
            if "shared_car" in h.cases:
                relative = r.random() < rate("shared_car_relative")
                j = self.partner_make(r, next(partner_idx), h, pat=h.pat if relative else None,
                                      foreign=h.foreign if relative else None)
                j.plate = h.plate
                j.cases.add("shared_car_partner")
                partners.append(j)
        for h, n in zip(common, twins):
            for _ in range(n):
                j = self.human_make(r, next(partner_idx), female=h.female, foreign=h.foreign,
                                    given=(h.g1, h.g2), pat=h.pat, mat=h.mat)
                partners.append(j)
        for h in swapped:
            partners.append(self.human_make(r, next(partner_idx), female=h.female, foreign=h.foreign,
                                            given=(h.g1, h.g2), pat=h.mat, mat=h.pat))

        # Driver records of the converted lead humans and of the partners.
        for h in conv:
            phone = next(iter(h.own_phones))
            h.records.append(self.record_make(
                r, h, park=h.park, hire=h.hire, active=rate("converted_active"), phone=phone, plate=h.plate,
                force_doc="two_parks" in h.cases, force_plate="shared_car" in h.cases))
            if "two_parks" in h.cases:
                phone2 = self.keys.extra_phone() if r.random() < rate("two_parks_other_phone") else phone
                plate2 = self.keys.extra_plate() if r.random() < rate("two_parks_other_plate") else h.plate
                h.own_phones.add(phone2)
                hire2 = self.end - int(r.random() * 365 * 3)
                h.records.append(self.record_make(r, h, park=self.other_park(r, h.park), hire=hire2,
                                                  active=rate("driver_active"), phone=phone2, plate=plate2,
                                                  force_doc=True))
        for j in partners:
            self.planned[j.idx] = j
            hire = self.end - int(r.random() * 365 * BACKGROUND_HIRE_YEARS)
            j.records.append(self.record_make(
                r, j, park=self.park_mix.draw(r.random), hire=hire, active=rate("driver_active"), phone=j.phone,
                plate=j.plate, force_phone="family_partner" in j.cases or "recycled_partner" in j.cases,
                force_plate="shared_car_partner" in j.cases))
        self.name_keys = Counter({h.name_key: 0 for h in lead_humans})
        self.leads_plan()

    def lead_second(self, r: Random) -> int:
        # Cabinets register recruits mostly during the working day.
        hour = 8 + int(r.random() * 13) if r.random() < rate("lead_working_hours") else int(r.random() * 24)
        return hour * 3600 + int(r.random() * 3600)

    def partner_make(self, r: Random, idx: int, h: _Human, **overrides) -> _Human:
        """A driver related to h (or not) whose full name is never h's own."""
        while True:
            j = self.human_make(r, idx, **overrides)
            if (j.g1, j.g2) != (h.g1, h.g2):
                return j

    def stranger_make(self, r: Random, idx: int, h: _Human) -> _Human:
        """A driver who shares no name with h: the new owner of h's recycled number."""
        names = {h.g1, h.pat, h.mat}
        while True:
            j = self.human_make(r, idx)
            if not names & {j.g1, j.pat, j.mat}:
                return j

    def leads_plan(self) -> None:
        """Fill every lead's raw values, choose its no-identifier kind and typos, then number them."""
        r, L = self.rng, self.n_leads
        leads = [lead for h in self.lead_humans for lead in h.leads]
        blocked = {"family_phone", "recycled_phone", "shared_car"}
        eligible = [lead for lead in leads if not blocked & lead.human.cases]
        for lead in r.sample(eligible, min(round(rate("case_no_identifier") * L), len(eligible))):
            lead.no_id_kind = self.pools.no_identifier_kind.draw(r.random)
        for lead in leads:
            self.lead_values(r, lead)
        # A new number on a converted human's lead: the human's own, on none of their records.
        pool = [lead for lead in leads if lead.phone_kind == "own" and lead.human.is_driver]
        for lead in r.sample(pool, min(round(rate("case_new_phone") * L), len(pool))):
            lead.phone, lead.phone_kind = self.keys.extra_phone(), "new"
        # A car none of the human's records carries (the shared-car case keeps its shared plate).
        pool = [lead for lead in leads if lead.plate is not None and lead.human.is_driver
                and "shared_car" not in lead.human.cases]
        for lead in r.sample(pool, min(round(rate("case_new_plate") * L), len(pool))):
            lead.plate = self.keys.extra_plate()
            lead.typos.add("new_plate")
        typo_fields = (("phone", "case_typo_phone"), ("document", "case_typo_document"),
                       ("document_two", "case_document_two_digits"),
                       ("email", "case_typo_email"), ("plate", "case_typo_plate"),
                       ("birth", "case_typo_birth_date"))
        for field, name in typo_fields:
            value = field.removesuffix("_two")
            pool = [lead for lead in leads if getattr(lead, value) is not None and lead.no_id_kind is None
                    and (value != "phone" or lead.phone_kind == "own") and value not in lead.typos
                    and field not in lead.typos and "new_plate" not in lead.typos]
            for lead in r.sample(pool, min(round(rate(name) * L), len(pool))):
                lead.typos.add(field)
        # One name error per lead: a changed letter, or a dropped, inserted or lost first letter.
        named = [lead for lead in leads if lead.no_id_kind != "nothing"]
        for kind in ("name", *NAME_ERRORS):
            share = rate("case_typo_name" if kind == "name" else f"case_name_{kind}")
            pool = [lead for lead in named if not lead.typos & {"name", *NAME_ERRORS}]
            for lead in r.sample(pool, min(round(share * L), len(pool))):
                lead.typos.add(kind)
        leads.sort(key=lambda lead: (lead.timestamp, lead.human.idx))
        base = 100_000 + int(r.random() * 50_000)
        per_year: Counter = Counter()
        for k, lead in enumerate(leads):
            lead.id = base + k
            if r.random() < rate("lead_external_id"):
                year = date.fromordinal(lead.day).year
                per_year[year] += 1
                lead.external_id = "CAB-%d-%06d" % (year, per_year[year])
        self.leads = leads

    def lead_values(self, r: Random, lead: _Lead) -> None:
        h, rnd = lead.human, r.random
        kind = lead.no_id_kind
        if kind is not None:
            if kind == "garbage":
                for field in [f for f in GARBAGE if rnd() < rate("garbage_field")] or ["phone"]:
                    options = self.garbage[field]
                    lead.garbage[field] = options[int(rnd() * len(options))]
            return
        forced_phone = h.lead_phone_kind != "own"
        if forced_phone or rnd() < rate("lead_phone"):
            lead.phone, lead.phone_kind = h.lead_phone, h.lead_phone_kind
        if rnd() < rate("lead_document"):
            lead.document = h.doc
        if rnd() < rate("lead_email"):
            lead.email = self.email_of(r, h)
        if "shared_car" in h.cases or rnd() < rate("lead_plate"):
            lead.plate = h.plate
        if rnd() < rate("lead_birth_date"):
            lead.birth = h.birth

    # -- streaming --------------------------------------------------------------------------

    def run(self, out_dir: Path) -> dict:
        self.plan()
        out_dir.mkdir(parents=True, exist_ok=True)
        with ExitStack() as files:
            handles = {name: files.enter_context(open(out_dir / name, "w", encoding="utf-8", newline=""))
                       for name in FILES}
            writers = {name: csv.writer(f, lineterminator="\n") for name, f in handles.items()}
            for name, columns in FILES.items():
                writers[name].writerow(columns)
            self.stream(writers, handles)
            self.leads_write(writers)
        return self.summary(out_dir)

    def stream(self, writers, handles) -> None:
        """Write every driver record in human order, with its truth row, trips and claims."""
        r = Random(f"ct4-demo:{self.seed}:stream")
        rnd = r.random
        drivers_w, claims_w = writers["drivers.csv"].writerow, writers["claims.csv"].writerow
        # Hex ids, dates and counts never need CSV quoting: plain writes are much faster.
        truth_write, trips_w = handles["drivers_truth.csv"].write, handles["trips.csv"].write
        # A human's second park record is written later, so row order never pairs records.
        deferred: list[tuple[int, int, tuple, str]] = []
        planned, name_keys, bg_two_parks = self.planned, self.name_keys, self.bg_two_parks
        hire_span, end = 365 * BACKGROUND_HIRE_YEARS, self.end
        p_family, p_car, p_recent = (rate("background_family_phone"), rate("background_shared_car"),
                                     rate("background_recent_trips"))
        active = rate("driver_active")
        prev = None
        n_records = 0
        for idx in range(self.n_driver_humans):
            h = planned.get(idx)
            if h is None:
                if prev is not None and rnd() < p_family:
                    # A relative of the previous driver, registered with the family phone.
                    h = self.human_make(r, idx, pat=prev.pat, foreign=prev.foreign, phone=prev.phone)
                else:
                    h = self.human_make(r, idx)
                if prev is not None and rnd() < p_car:
                    h.plate = prev.plate  # day and night shifts on one car
                park = self.park_mix.draw(rnd)
                hire = end - int(rnd() * hire_span)
                h.records.append(self.record_make(r, h, park=park, hire=hire, active=active, phone=h.phone,
                                                  plate=h.plate, force_doc=idx in bg_two_parks))
                if idx in bg_two_parks:
                    h.records.append(self.record_make(
                        r, h, park=self.other_park(r, park), hire=end - int(rnd() * hire_span), active=active,
                        phone=h.phone, plate=h.plate, force_doc=True))
                for rec in h.records:
                    if rnd() < p_recent:
                        self.trips_recent(r, rec, trips_w)
                prev = h
            else:
                self.planned_trips(r, h, trips_w, claims_w)
            human_id = h.human_id
            rec = h.records[0]
            drivers_w(rec.row)
            truth_write(f"{rec.driver_id},{human_id}\n")
            for rec in h.records[1:]:
                heappush(deferred, (idx + 1 + int(rnd() * DEFER_SPAN), n_records, rec.row, human_id))
            n_records += len(h.records)
            while deferred and deferred[0][0] <= idx:
                self.deferred_write(heappop(deferred), drivers_w, truth_write)
            key = (h.g1, h.g2, h.pat, h.mat)
            if key in name_keys:
                name_keys[key] += 1
        while deferred:
            self.deferred_write(heappop(deferred), drivers_w, truth_write)
        self.counts["drivers.csv"] = self.counts["drivers_truth.csv"] = n_records

    @staticmethod
    def deferred_write(item, drivers_w, truth_write) -> None:
        _, _, row, human_id = item
        drivers_w(row)
        truth_write(f"{row[0]},{human_id}\n")

    def trips_write(self, rec: _Record, trips: list[tuple[int, int]], writer) -> None:
        driver_id, iso = rec.driver_id, self.iso
        for day, n in trips:
            writer(f"{driver_id},{iso(day)},{n}\n")
        self.counts["trips.csv"] += len(trips)

    def trips_recent(self, r: Random, rec: _Record, writer) -> None:
        span, _, p_day, t_lo, t_hi = TRIP_PROFILES["recent"]
        first = max(self.end - span + 1, rec.hire)
        trips = [(day, t_lo + int(r.random() * (t_hi - t_lo + 1)))
                 for day in range(first, self.end + 1) if r.random() < p_day]
        self.trips_write(rec, trips, writer)

    def planned_trips(self, r: Random, h: _Human, trips_w, claims_w) -> None:
        """Trips of a planned driver; for a converted lead also its milestones and claims."""
        if not h.leads:
            for rec in h.records:
                if r.random() < rate("background_recent_trips"):
                    self.trips_recent(r, rec, trips_w)
            return
        rec = h.records[0]
        profile = self.pools.trip_profile.draw(r.random)
        trips: list[tuple[int, int]] = []
        if profile != "never":
            span_lo, span_hi, p_day, t_lo, t_hi = TRIP_PROFILES[profile]
            first_lead = h.leads[0].day
            start = (rec.hire + int(r.random() * 4) if rec.hire >= first_lead
                     else max(rec.hire, first_lead - int(r.random() * 21)))
            stop = min(self.end, start + span_lo + int(r.random() * (span_hi - span_lo + 1)))
            trips = [(day, t_lo + int(r.random() * (t_hi - t_lo + 1)))
                     for day in range(start, stop + 1) if r.random() < p_day]
        self.trips_write(rec, trips, trips_w)
        if len(h.records) > 1 and r.random() < rate("second_park_trips"):
            self.trips_recent(r, h.records[1], trips_w)
        by_day = dict(trips)
        claimed = False
        for lead in h.leads:
            total, reached = 0, {}
            for day in range(lead.day, lead.day + CLAIM_WINDOW_DAYS):
                total += by_day.get(day, 0)
                for m in MILESTONE_AMOUNTS:
                    if total >= m and m not in reached:
                        reached[m] = day
            for m in reached:
                self.counts[f"leads_reached_{m}"] += 1
            if reached and not claimed:
                claimed = True  # the platform pays a human's milestones once, on one lead
                self.claims_write(r, lead, rec, reached, claims_w)

    def claims_write(self, r: Random, lead: _Lead, rec: _Record, reached: dict[int, int], writer) -> None:
        mode = self.pools.claim_mode.draw(r.random)
        lag = 1 + int(r.random() * 10)  # the park claims in batches, so later milestones are claimed later
        for m, day in reached.items():
            claimed_day = day + lag
            present = mode == "all" or (mode == "partial" and r.random() < rate("claim_partial_each"))
            if not present or claimed_day > self.end:
                continue
            status = self.pools.claim_status.draw(r.random)
            second = 9 * 3600 + int(r.random() * 10 * 3600)
            writer((lead.source_pk, rec.driver_id, m, CLAIM_AMOUNTS[m], status,
                    self.timestamp(claimed_day, second)))
            self.counts["claims.csv"] += 1
            self.counts[f"claims_{status}"] += 1

    # -- leads and ground truth ---------------------------------------------------------------

    def leads_write(self, writers) -> None:
        r = Random(f"ct4-demo:{self.seed}:leads")
        lead_w, truth_w = writers["cabinet_leads.csv"].writerow, writers["ground_truth.csv"].writerow
        for lead in self.leads:
            h = lead.human
            row, own = self.lead_render(r, lead)
            lead.has_identifier = int(bool(own))
            if own == ["birth_date"]:
                self.counts["leads_identifier_birth_date_only"] += 1
            cases = lead.cases
            if lead.phone_kind == "family":
                cases.append("family_phone")
            if lead.phone_kind == "recycled":
                cases.append("recycled_phone")
            if lead.phone_kind == "new":
                cases.append("new_phone")
            if lead.plate is not None and "shared_car" in h.cases:
                cases.append("shared_car")
            if lead.no_id_kind != "nothing" and self.name_keys[h.name_key] - (1 if h.is_driver else 0) > 0:
                cases.append("common_name")
            if lead.no_id_kind != "nothing" and "swapped_namesake" in h.cases:
                cases.append("swapped_namesake")
            if len(h.records) > 1:
                cases.append("two_parks")
            if len(h.leads) > 1:
                cases.append("applied_twice")
            if lead.no_id_kind is not None:
                cases.append("no_identifier")
                if lead.no_id_kind == "names_only":
                    cases.append("names_only")
            if not h.is_driver:
                cases.append("not_a_driver")
            cases.sort(key=CASE_TYPES.index)
            lead_w(row)
            truth_w((lead.source_pk, h.human_id if h.is_driver else "",
                     ";".join(rec.driver_id for rec in h.records), ";".join(cases), lead.has_identifier))
            self.counts.update(f"case_{c}" for c in cases)
            self.counts["leads_with_identifier"] += lead.has_identifier
            if set(cases) - {"not_a_driver"}:
                self.counts["leads_with_hard_case"] += 1
        self.counts["cabinet_leads.csv"] = self.counts["ground_truth.csv"] = len(self.leads)

    def lead_render(self, r: Random, lead: _Lead) -> tuple[tuple, list[str]]:
        """The lead's CSV row and which of its identifiers are the human's own."""
        h, rnd, pools, keys = lead.human, r.random, self.pools, self.keys
        own: list[str] = []
        phone = document = email = plate = birth = ""
        first = middle = last = ""
        if lead.no_id_kind != "nothing":
            first, middle, last = self.lead_names(r, lead)
        if lead.phone is not None:
            digits = lead.phone
            if digits in h.own_phones:
                own.append("phone")
            if "phone" in lead.typos:
                digits = _typo_key(r, digits, keys.phone_taken, _typo_digits, keep=1)
                lead.cases.append("typo_phone")
            phone = _phone_format(digits, pools.lead_phone_format.draw(rnd))
        if lead.document is not None:
            own.append("document")
            digits = lead.document
            if "document" in lead.typos:
                digits = _typo_key(r, digits, keys.document_taken, _typo_digits, keep=2 if h.foreign else 0,
                                   indels=True)
                lead.cases.append("typo_document")
            elif "document_two" in lead.typos:
                digits = _typo_key(r, digits, keys.document_taken, _typo_two_digits, keep=2 if h.foreign else 0)
                lead.cases.append("document_two_digits")
            document = _document_format(r, digits, pools.lead_document_format.draw(rnd), h.foreign)
        if lead.email is not None:
            own.append("email")
            value = lead.email
            if "email" in lead.typos:
                value = _typo_key(r, value, self.emails.__contains__, _typo_email)
                lead.cases.append("typo_email")
            email = _email_format(value, pools.lead_email_format.draw(rnd))
        if lead.plate is not None:
            if "new_plate" in lead.typos:
                lead.cases.append("new_plate")
            else:
                own.append("plate")
            value = lead.plate
            if "plate" in lead.typos:
                value = _typo_key(r, value, keys.plate_taken, _typo_plate)
                lead.cases.append("typo_plate")
            plate = _plate_format(value, pools.lead_plate_format.draw(rnd))
        if lead.birth is not None:
            own.append("birth_date")
            day = lead.birth
            if "birth" in lead.typos:
                day = _typo_birth(r, day)
                lead.cases.append("typo_birth_date")
            birth = self.iso(day)
        garbage = lead.garbage
        if garbage:
            phone, document = garbage.get("phone", phone), garbage.get("document", document)
            email, plate = garbage.get("email", email), garbage.get("plate", plate)
            birth = garbage.get("birth_date", birth)
        row = (lead.id, lead.external_id or "", self.timestamp(lead.day, lead.second), first, middle, last,
               phone, document, email, plate, lead.park, birth)
        return row, own

    def lead_names(self, r: Random, lead: _Lead) -> tuple[str, str, str]:
        h, rnd = lead.human, r.random
        parts = [h.g1, h.g2, h.pat, h.mat]  # given names, paternal and maternal surname
        layout = self.pools.lead_name_layout.draw(rnd)
        # Which parts go in the first, middle and last name boxes.
        if layout == "boxes":
            boxes = ((0,), (1,), (2, 3))
        elif layout == "givens_in_first":
            boxes = ((0, 1), (), (2, 3))
        elif layout == "drop_second_given":
            boxes = ((0,), (), (2, 3))
        elif layout == "one_surname":
            boxes = ((0, 1), (), (2,)) if rnd() < 0.5 else ((0,), (1,), (2,))
            lead.cases.append("one_surname")
        elif layout == "wrong_boxes":
            boxes = (((2, 3), (), (0, 1)), ((0,), (2,), (3,)), ((2,), (3,), (0, 1)),
                     ((0, 1), (2, 3), ()))[int(rnd() * 4)]
        else:
            whole = (2, 3, 0, 1) if rnd() < 0.6 else (0, 1, 2, 3)
            boxes = (whole, (), ()) if rnd() < 0.8 else ((), (), whole)
        # Errors land on parts the lead shows.
        shown = [k for box in boxes for k in box if len(parts[k]) >= 3]
        if "name" in lead.typos:
            k = shown[int(rnd() * len(shown))]
            parts[k] = _typo_name(r, parts[k])
            lead.cases.append("typo_name")
        for kind in NAME_ERRORS:
            if kind in lead.typos:
                # Mostly the first given name (the 'Javir', 'Lui', 'lor'); else another shown part.
                others = [k for k in shown if k]
                k = 0 if rnd() < rate("name_error_on_given") or not others else others[int(rnd() * len(others))]
                parts[k] = _name_error(r, parts[k], kind)
                lead.cases.append(f"name_{kind}")
        names = tuple(" ".join(parts[k] for k in box if parts[k]) for box in boxes)
        if rnd() < rate("lead_name_no_accents"):
            names = tuple(_ascii(n) for n in names)
        roll = rnd()
        if roll < rate("lead_name_upper"):
            names = tuple(n.upper() for n in names)
        elif roll < rate("lead_name_upper") + rate("lead_name_lower"):
            names = tuple(n.lower() for n in names)
        if rnd() < rate("lead_name_extra_spaces"):
            names = tuple(n.replace(" ", "  ", 1) + " " if n else n for n in names)
        return names

    # -- summary --------------------------------------------------------------------------------

    def summary(self, out_dir: Path) -> dict:
        c = self.counts
        n = len(self.leads) or 1
        cases = {case: c[f"case_{case}"] for case in CASE_TYPES}
        declared = {case: rate(f"case_{case}") for case in CASE_TYPES if f"case_{case}" in RATES}
        return {
            "out_dir": str(out_dir),
            "seed": self.seed,
            "end_date": self.iso(self.end),
            "parks": list(self.parks),
            "files": {name: c[name] for name in FILES},
            "driver_humans": self.n_driver_humans,
            "leads_converted": sum(1 for lead in self.leads if lead.human.is_driver),
            "leads_with_identifier": c["leads_with_identifier"],
            "leads_identifier_birth_date_only": c["leads_identifier_birth_date_only"],
            "leads_with_hard_case": c["leads_with_hard_case"],
            "hard_case_share": round(c["leads_with_hard_case"] / n, 4),
            "cases": cases,
            "case_shares": {case: round(count / n, 4) for case, count in cases.items()},
            "declared_shares": declared,
            "milestones_reached": {m: c[f"leads_reached_{m}"] for m in MILESTONE_AMOUNTS},
            "claims": {s: c[f"claims_{s}"] for s in ("claimed", "paid", "rejected")},
        }


# --- Typos and formats ---------------------------------------------------------------------------


def _typo_key(r: Random, value: str, taken, typo, **kwargs) -> str:
    """A typo of value that is nobody else's key (a typo landing on a real key is a different case)."""
    for _ in range(50):
        candidate = typo(r, value, **kwargs)
        if candidate != value and not taken(candidate):
            return candidate
    return candidate


def _typo_digits(r: Random, digits: str, keep: int = 0, indels: bool = False) -> str:
    """One digit changed or two adjacent different digits swapped; with `indels`, also one digit dropped
    or typed twice (a DNI's eight digits typed as seven or nine). The first `keep` stay."""
    chars = list(digits)
    swaps = [i for i in range(keep, len(chars) - 1) if chars[i] != chars[i + 1]]
    roll = r.random() if swaps or indels else 1.0
    if swaps and roll < 0.4:
        i = swaps[int(r.random() * len(swaps))]
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    elif indels and roll >= 0.8:
        i = keep + int(r.random() * (len(chars) - keep))
        if roll < 0.9:
            del chars[i]
        else:
            chars.insert(i, chars[i])
    else:
        i = keep + int(r.random() * (len(chars) - keep))
        chars[i] = str((int(chars[i]) + 1 + int(r.random() * 9)) % 10)
    return "".join(chars)


def _typo_two_digits(r: Random, digits: str, keep: int = 0) -> str:
    """Two different digits changed (a misread form, a number copied from a blurred photo)."""
    chars = list(digits)
    first, second = r.sample(range(keep, len(chars)), 2)
    for i in (first, second):
        chars[i] = str((int(chars[i]) + 1 + int(r.random() * 9)) % 10)
    return "".join(chars)


def _name_error(r: Random, name: str, kind: str) -> str:
    """A name with a letter dropped (never the first), a letter inserted, or its first letter lost.
    Compound parts ('del Pilar') are hit in their last word."""
    head, _, word = name.rpartition(" ")
    prefix = f"{head} " if head else ""
    if kind == "lost_first_letter":
        return prefix + word[1:]
    if kind == "dropped_letter":
        i = 1 + int(r.random() * (len(word) - 1))
        return prefix + word[:i] + word[i + 1:]
    i = 1 + int(r.random() * len(word))
    letters = _COMMON_LETTERS if r.random() < 0.7 else _LETTERS.lower()
    return prefix + word[:i] + letters[int(r.random() * len(letters))] + word[i:]


def _typo_birth(r: Random, ordinal: int) -> int:
    """Day and month swapped when the day could be a month, else the year or the day one off."""
    day = date.fromordinal(ordinal)
    roll = r.random()
    if roll < 0.5 and day.day <= 12 and day.day != day.month:
        return date(day.year, day.day, day.month).toordinal()
    if roll < 0.75 and (day.month, day.day) != (2, 29):
        return date(day.year + (1 if r.random() < 0.5 else -1), day.month, day.day).toordinal()
    return ordinal + (1 if day.day < 28 else -1)


def _typo_email(r: Random, email: str) -> str:
    local, _, domain = email.partition("@")
    if r.random() < 0.3 and domain in EMAIL_DOMAIN_TYPOS:
        options = EMAIL_DOMAIN_TYPOS[domain]
        return f"{local}@{options[int(r.random() * len(options))]}"
    chars = list(local)
    i = int(r.random() * len(chars))
    op = int(r.random() * 3)
    if op == 0 and len(chars) > 3:
        del chars[i]
    elif op == 1:
        chars.insert(i, chars[i])
    else:
        chars[i] = "abcdefghijklmnopqrstuvwxyz"[int(r.random() * 26)] if chars[i].isalpha() else \
            str(int(r.random() * 10))
    return "".join(chars) + "@" + domain


def _typo_plate(r: Random, plate: str) -> str:
    chars = list(plate)
    if r.random() < 0.25 and chars[4] != chars[5]:
        chars[4], chars[5] = chars[5], chars[4]
    else:
        i = int(r.random() * 6)
        chars[i] = (str(int(r.random() * 10)) if chars[i].isdigit() else _LETTERS[int(r.random() * 26)])
    return "".join(chars)


def _typo_name(r: Random, name: str) -> str:
    lower = name.lower()
    swaps = [(a, b) for a, b in NAME_TYPO_SWAPS if a in lower]
    if swaps and r.random() < 0.6:
        a, b = swaps[int(r.random() * len(swaps))]
        i = lower.index(a)
        repl = b.upper() if name[i].isupper() else b
        return name[:i] + repl + name[i + len(a):]
    if lower.startswith("h") and r.random() < 0.3:
        return name[1].upper() + name[2:]
    i = 1 + int(r.random() * (len(name) - 1))
    op = int(r.random() * 3)
    if op == 0:
        return name[:i] + name[i + 1:]
    if op == 1:
        return name[:i] + name[i] + name[i:]
    j = min(i + 1, len(name) - 1)
    if name[i] == name[j] or name[i] == " " or name[j] == " ":
        return name[:i] + name[i + 1:]
    return name[:i] + name[j] + name[i] + name[j + 1:]


def _phone_format(digits: str, fmt: str) -> str:
    if len(digits) != 9:
        return digits
    a, b, c = digits[:3], digits[3:6], digits[6:]
    return {"plain": digits, "spaced_intl": f"+51 {a} {b} {c}", "dashed": f"{a}-{b}-{c}",
            "intl_digits": "51" + digits, "spaced": f"{a} {b} {c}", "intl": "+51" + digits}[fmt]


def _document_format(r: Random, digits: str, fmt: str, foreign: bool) -> str:
    if digits.startswith("0") and r.random() < rate("lead_document_excel"):
        return digits.lstrip("0") or "0"  # Excel read it as a number
    if fmt == "spaces":
        return f"{digits[:4]} {digits[4:]}"
    if fmt == "dots":
        return f"{digits[:2]}.{digits[2:5]}.{digits[5:]}"
    if fmt == "prefixed":
        return ("CE " if foreign else "DNI ") + digits
    if fmt == "padded":
        return f" {digits} "
    return digits


def _email_format(email: str, fmt: str) -> str:
    if fmt == "mixed":
        local, _, domain = email.partition("@")
        return local.title() + "@" + domain.capitalize()  # Maria.Flores@Hotmail.com
    if fmt == "upper":
        return email.upper()
    if fmt == "padded":
        return email + " "
    return email


def _plate_format(plate: str, fmt: str) -> str:
    dashed = f"{plate[:3]}-{plate[3:]}"
    return {"dash": dashed, "compact": plate, "lower": plate.lower(), "space": f"{plate[:3]} {plate[3:]}",
            "lower_dash": dashed.lower()}[fmt]


# --- Entry point ----------------------------------------------------------------------------------


def demo_data_generate(*, out_dir: str | os.PathLike, end_date: date, drivers: int = 20_000, leads: int = 5_000,
                       seed: int = 42, parks: int = 3, days: int = 120) -> dict:
    """Write a synthetic park and its ground truth into out_dir; return counts per file and per case."""
    if drivers < 1 or leads < 1 or parks < 1 or days < 1:
        raise ValueError("--drivers, --leads, --parks and --days must be positive")
    generator = _Generator(drivers=drivers, leads=leads, seed=seed, parks=parks, days=days, end_date=end_date)
    return generator.run(Path(out_dir))
